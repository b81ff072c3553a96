"""Building the umT5 `TextEncoder` from weights: seeded random ones, a state dict, or files."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from transformers import UMT5EncoderModel

from ..configs import T5Config
from ..loading.checkpoint import load_into
from ..loading.random_init import random_state_dict
from ..loading.t5_format import HF_EMBEDDING_KEYS, infer_t5_config, load_t5_state_dict, to_hf_t5
from ..reference.text_encoder import TextEncoder, umt5_config
from ..reference.tokenizer import Tokenizer, load_tokenizer, tiny_tokenizer


def build_umt5_encoder(
    config: T5Config,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str | None = None,
) -> UMT5EncoderModel:
    """A `UMT5EncoderModel` holding `state_dict` (Wan or HF names), in eval mode without grads.

    The module is built on the meta device and the weights are assigned, so an XXL model never
    exists twice in memory. Unlike `from_pretrained`, nothing is kept in fp32 behind the caller's
    back: the official encoder runs its last FFN projection in the model dtype too.
    """
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(config, attn_implementation))
    load_into(model, to_hf_t5(state_dict), dtype=dtype, device=device, source="umT5 encoder weights")
    # Assignment gives each embedding name its own Parameter; share one again, as the tie intends.
    model.set_input_embeddings(model.shared)
    return model.eval().requires_grad_(False)


def random_text_encoder(
    config: T5Config,
    tokenizer: Tokenizer | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str | None = None,
) -> TextEncoder:
    """Seeded random weights (`random_state_dict`); the tiny byte tokenizer unless one is given."""
    with torch.device("meta"):
        shape_model = UMT5EncoderModel(umt5_config(config))
    weights = random_state_dict(shape_model, seed)
    # random_state_dict draws the two tied names independently; one table must serve both.
    weights[HF_EMBEDDING_KEYS[1]] = weights[HF_EMBEDDING_KEYS[0]]
    if tokenizer is None:
        tokenizer = tiny_tokenizer(config.vocab_size, config.text_len)
    model = build_umt5_encoder(config, weights, dtype=dtype, device=device, attn_implementation=attn_implementation)
    return TextEncoder(model, tokenizer)


def text_encoder_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer,
    *,
    config: T5Config | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str | None = None,
) -> TextEncoder:
    """Weights in Wan or HF names; the config is read from their shapes unless given."""
    config = config or infer_t5_config(state_dict, text_len=tokenizer.text_len)
    model = build_umt5_encoder(config, state_dict, dtype=dtype, device=device, attn_implementation=attn_implementation)
    return TextEncoder(model, tokenizer)


def text_encoder_from_files(
    weights: str | Path,
    tokenizer: str | Path,
    *,
    text_len: int = 512,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str | None = None,
) -> TextEncoder:
    """From the official `.pth` / a diffusers `text_encoder/` folder and a local tokenizer folder."""
    return text_encoder_from_state_dict(load_t5_state_dict(weights), load_tokenizer(tokenizer, text_len),
                                        dtype=dtype, device=device, attn_implementation=attn_implementation)
