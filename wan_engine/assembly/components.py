"""`load_dit`, `load_vae`, `load_text_encoder`: one reference component from either on-disk layout.

Each takes the model root, the component's own folder, or its weight file. The configs are
inferred from tensor shapes (the checkpoints carry too little config), then the reference module
is built on the meta device and the tensors are assigned into it, so no randomly initialised copy
is ever made.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..configs import DiTConfig, VAEConfig
from ..loading.checkpoint import load_into
from ..loading.errors import CheckpointError
from ..loading.layout import detect_layout
from ..loading.state_dicts import dit_config_of, read_dit_state_dict, read_vae_state_dict, vae_config_of
from ..reference.dit import WanDiT
from ..reference.vae import WanVAE
from .text_encoder import text_encoder_from_files


def load_dit(path: str | Path, dtype: torch.dtype | None = None, device="cpu", config: DiTConfig | None = None):
    """The reference `WanDiT` with the checkpoint's weights (cast to `dtype`, default: as stored)."""
    sd, config_json = read_dit_state_dict(path)
    cfg = config or dit_config_of(sd, path, config_json)
    with torch.device("meta"):
        model = WanDiT(cfg, compute_dtype=dtype or torch.float32)
    return load_into(model, sd, dtype=dtype, device=device, source=str(path), consume=True).eval().requires_grad_(False)


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu", config: VAEConfig | None = None):
    """The reference `WanVAE` (fp32 by default, as the official runs it)."""
    sd = read_vae_state_dict(path)
    cfg = config or vae_config_of(sd, path)
    with torch.device("meta"):
        model = WanVAE(cfg)
    return load_into(model, sd, dtype=dtype, device=device, source=str(path), consume=True).eval().requires_grad_(False)


def load_text_encoder(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu", text_len: int = 512,
                      tokenizer: str | Path | None = None):
    """The umT5 `TextEncoder` (weights + tokenizer) from a model root in either layout.

    `path` may also be the weights alone (`models_t5_umt5-xxl-enc-bf16.pth` or a `text_encoder/`
    folder), in which case `tokenizer` names the tokenizer folder.
    """
    path = Path(path).expanduser()
    weights = path
    if path.is_dir() and tokenizer is None:
        layout = detect_layout(path)
        if layout.text_encoder is None or layout.tokenizer is None:
            raise CheckpointError(f"{path}: no text encoder weights and tokenizer in this {layout.kind} layout")
        weights, tokenizer = layout.text_encoder, layout.tokenizer
    if tokenizer is None:
        raise ValueError("tokenizer: pass the tokenizer folder when `path` is a weights file")
    try:
        return text_encoder_from_files(weights, tokenizer, text_len=text_len, dtype=dtype, device=device)
    except KeyError as e:  # the format module names the key that belongs to no umT5 encoder
        raise CheckpointError(f"{weights}: {e.args[0] if e.args else e}") from None
