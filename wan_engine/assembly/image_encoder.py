"""`load_image_encoder`, `random_image_encoder`: the reference CLIP image encoder of I2V / FLF2V.

As for the DiT and VAE (components.py): the config is inferred from the tensor shapes, the module
is built on the meta device and the tensors are assigned into it, so no random copy is made.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..configs import ImageEncoderConfig
from ..loading.checkpoint import load_into
from ..loading.clip_format import image_encoder_config_of, image_encoder_weights, read_image_encoder_state_dict
from ..loading.errors import CheckpointError
from ..loading.random_init import random_state_dict
from ..reference.image_encoder import WanImageEncoder

log = logging.getLogger(__name__)


def _build(cfg: ImageEncoderConfig, state_dict: dict, dtype: torch.dtype, device, source: str) -> WanImageEncoder:
    # An fp16/bf16 load computes in that dtype, as the official fp16 tower does (LayerNorms in fp32).
    compute_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
    with torch.device("meta"):
        model = WanImageEncoder(cfg, compute_dtype=compute_dtype)
    load_into(model, state_dict, dtype=dtype, device=device, source=source, consume=True)
    return model.eval().requires_grad_(False)


def load_image_encoder(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu",
                       config: ImageEncoderConfig | None = None) -> WanImageEncoder:
    """The reference `WanImageEncoder` with a checkpoint's weights (fp32 by default).

    `path`: a model root in either layout, a diffusers `image_encoder/` folder, or the official
    `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`. The tensors Wan never reads (the
    last block, post-norm, head, text tower) are left out and logged at INFO.
    """
    sd, config_json = read_image_encoder_state_dict(path)
    cfg = config or image_encoder_config_of(sd, config_json, path)
    weights = image_encoder_weights(sd, path)
    del sd  # the renamed dict holds what the module needs; the text tower can go
    if cfg.num_layers != weights.file_layers:
        raise CheckpointError(f"{path}: config.num_layers = {cfg.num_layers} but the file holds "
                              f"{weights.file_layers} blocks")
    log.info("%s: %s", path, weights.ignored_summary())
    return _build(cfg, weights.state_dict, dtype, device, str(path))


def random_image_encoder(cfg: ImageEncoderConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                         device="cpu") -> WanImageEncoder:
    """Seeded random weights (`random_state_dict`: drawn in fp32 on the CPU, so reproducible anywhere)."""
    with torch.device("meta"):
        shapes = WanImageEncoder(cfg)
    return _build(cfg, random_state_dict(shapes, seed), dtype, device, f"random image encoder (seed {seed})")
