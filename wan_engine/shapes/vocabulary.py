"""The `shapes` model's tokenizer: one token per word of the world's grammar.

The byte-level tiny tokenizer spells `red` in 3 tokens and `magenta` in 7, so every word after the
colour lands at a different position depending on the colour, and a word's bytes recur in other
words (`g` in green, magenta, moving, gray, background). Through a frozen random umT5 that hides
which caption was given behind a shifting mixture. With one token per word, the caption's parts
sit at fixed positions (colour 1, shape 2, direction 4, background 7) and each word has its own
embedding, which the DiT's cross-attention can pick out.

Ids keep T5's meaning: pad 0, EOS 1, unknown 2, then the world's words in a fixed order. A word
outside the grammar encodes as unknown; the tokenizer is saved with the model (the official
tokenizer folder), so the normal loaders read it.
"""
from __future__ import annotations

from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..reference.tokenizer import EOS_ID, Tokenizer
from .world import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES

SPECIALS = ("<pad>", "</s>", "<unk>")
WORDS = tuple(dict.fromkeys(("a", "moving", "on", "background", *COLORS, *SHAPES, *DIRECTIONS, *BACKGROUNDS)))


def shapes_hf_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased, split on whitespace and punctuation, one id per known word."""
    vocab = {token: i for i, token in enumerate((*SPECIALS, *WORDS))}
    rust = _RustTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    rust.normalizer = normalizers.Lowercase()
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=rust, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        padding_side="right", model_max_length=1 << 30,  # the Tokenizer wrapper owns truncation
    )


def shapes_tokenizer(text_len: int) -> Tokenizer:
    return Tokenizer(shapes_hf_tokenizer(), text_len)
