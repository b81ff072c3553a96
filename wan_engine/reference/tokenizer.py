"""Prompt tokenization as Wan2.1 does it: clean, add EOS, truncate, pad to a fixed length.

The real tokenizer is google/umt5-xxl (a `google/umt5-xxl/` folder in the original release,
`tokenizer/` in the diffusers layout) and is only ever read from local files. `tiny_tokenizer`
builds a byte-level tokenizer in code for the `tiny` preset: no files, no network.
"""
from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Sequence

import regex  # the official cleaner uses `regex`, whose \s differs slightly from `re`'s
import torch
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# T5's special-token ids, which the tiny tokenizer keeps so ids mean the same thing.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_TINY_SPECIALS = ("<pad>", "</s>", "<unk>")
TINY_MIN_VOCAB = len(_TINY_SPECIALS) + 256

# Files that mark a folder as a Hugging Face tokenizer folder.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: ftfy, HTML-unescape twice, collapse whitespace, strip.

    ftfy is not optional: it turns fullwidth ASCII forms into ASCII (the official Chinese negative
    prompt's '，' become ','), so skipping it changes the tokens the text encoder sees. It is imported
    here rather than at module level so that code which never cleans a prompt (the GPU image has no
    ftfy) can still import the text encoder; cleaning without it fails.
    """
    try:
        import ftfy
    except ImportError as err:
        raise ImportError("prompt cleaning needs ftfy, as the official Wan2.1 cleaner does: pip install ftfy") from err
    text = ftfy.fix_text(text)
    # Twice, as the official does, so doubly escaped entities such as '&amp;amp;' come out as '&'.
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """Wraps a Hugging Face tokenizer with Wan's cleaning, EOS, truncation and padding.

    Calling it on B prompts returns `(ids, mask)`, both int64 `[B, text_len]`: right-padded with
    the pad id, mask 1 on real tokens (EOS included) and 0 on padding.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase, text_len: int = 512, *, clean: bool = True):
        if not isinstance(text_len, int) or text_len < 2:
            raise ValueError(f"text_len must be an int >= 2 (room for a token and EOS); got {text_len!r}")
        if hf_tokenizer.pad_token_id is None or hf_tokenizer.eos_token_id is None:
            raise ValueError("hf_tokenizer must define both a pad token and an EOS token")
        if hf_tokenizer.padding_side != "right":
            raise ValueError(f"hf_tokenizer must pad on the right (got {hf_tokenizer.padding_side!r})")
        self.hf = hf_tokenizer
        self.text_len = text_len
        self.clean = clean

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (added tokens included)."""
        return len(self.hf)

    def _prepare(self, prompts: str | Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"prompts must be a str or a non-empty list of str; got {type(prompts).__name__}"
            )
        return [clean_prompt(p) for p in prompts] if self.clean else list(prompts)

    def _count(self, texts: list[str]) -> list[int]:
        enc = self.hf(texts, add_special_tokens=True, truncation=False, padding=False, verbose=False)
        return [len(row) for row in enc["input_ids"]]

    def token_counts(self, prompts: str | Sequence[str]) -> list[int]:
        """Untruncated token count of each prompt after cleaning, EOS included."""
        return self._count(self._prepare(prompts))

    def __call__(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = self._prepare(prompts)
        for i, count in enumerate(self._count(texts)):
            if count > self.text_len:
                warnings.warn(
                    f"prompt {i} has {count} tokens (EOS included) but text_len is {self.text_len}: "
                    f"truncated to {self.text_len} tokens ({self.text_len - 1} text tokens + EOS); "
                    f"{count - self.text_len} tokens dropped",
                    stacklevel=2,
                )
        enc = self.hf(
            texts,
            add_special_tokens=True,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()


def find_tokenizer_folder(path: str | Path) -> Path:
    """The tokenizer folder itself, or the one inside an original (`google/umt5-xxl/`) or
    diffusers (`tokenizer/`) model folder."""
    root = Path(path).expanduser()
    for candidate in (root, root / "google" / "umt5-xxl", root / "tokenizer"):
        if any((candidate / name).is_file() for name in _TOKENIZER_FILES):
            return candidate
    raise FileNotFoundError(
        f"no tokenizer found at {root} (looked for {', '.join(_TOKENIZER_FILES)} there, "
        f"in google/umt5-xxl/ and in tokenizer/)"
    )


def load_tokenizer(path: str | Path, text_len: int = 512) -> Tokenizer:
    """The umT5 tokenizer from a local folder (never the network)."""
    folder = find_tokenizer_folder(path)
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers/tokenizers raise many types for a bad folder
        # ValueError, so the CLI reports it; the loading layer's CheckpointError is one too.
        raise ValueError(f"{folder}: unreadable tokenizer files ({type(e).__name__}: {e})") from e
    return Tokenizer(hf_tokenizer, text_len)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which the ByteLevel pre-tokenizer emits."""
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)
    ]
    mapping = {b: chr(b) for b in printable}
    spare = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(spare)
            spare += 1
    return mapping


def tiny_hf_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A deterministic byte-level tokenizer: pad 0, EOS 1, unk 2, byte b -> id 3 + b.

    Every string (any script) encodes without unknowns; ids 259..vocab_size-1 are never emitted,
    like the padded tail of umT5's embedding table.
    """
    if vocab_size < TINY_MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {TINY_MIN_VOCAB} (3 specials + 256 bytes); got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(_TINY_SPECIALS)}
    vocab.update({char: len(_TINY_SPECIALS) + b for b, char in _byte_to_unicode().items()})
    # BPE without merges emits one token per byte-level character.
    rust = _RustTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    rust.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=rust,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=1 << 30,  # the Tokenizer wrapper owns truncation
    )


def tiny_tokenizer(vocab_size: int = 384, text_len: int = 512) -> Tokenizer:
    """`tiny_hf_tokenizer` behind the Wan `Tokenizer` wrapper."""
    return Tokenizer(tiny_hf_tokenizer(vocab_size), text_len)
