"""`load_dit`, `load_vae`, `load_text_encoder`: one component from either on-disk layout.

Each takes the model root, the component's own folder, or its weight file. Configs are inferred
from tensor shapes (the checkpoints carry too little config), then the reference module is built on
the meta device and the tensors are assigned into it, so no randomly initialised copy is ever made.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..configs import DiTConfig, VAEConfig
from .checkpoint import load_into, read_sharded, read_weights
from .errors import CheckpointError
from .layout import DIT_STEM, ORIGINAL_VAE, detect_layout


def _rename(convert, sd: dict, source) -> dict:
    try:
        return convert(sd)
    except KeyError as e:
        raise CheckpointError(f"{source}: unknown tensor name {e.args[0]!r} for this model format") from None


def _infer(infer_config, sd: dict, source, *args):
    """A config inferred from tensor shapes; a state dict of another model is a CheckpointError
    naming the file (the format modules raise KeyError naming the key)."""
    try:
        return infer_config(sd, *args)
    except KeyError as e:
        raise CheckpointError(f"{source}: {e.args[0] if e.args else e}") from None


def is_diffusers_dit(sd: dict) -> bool:
    return any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k for k in sd)


def read_dit_state_dict(path: str | Path) -> tuple[dict, dict]:
    """(official-name state dict, config.json contents) of a DiT given a root, folder or file."""
    from .dit_format import diffusers_to_official_dit

    path = Path(path).expanduser()
    if path.is_file():
        sd, config = read_weights(path), {}
    else:
        layout = detect_layout(path)
        sd, config = read_sharded(layout.dit_dir, DIT_STEM), layout.dit_config
    if is_diffusers_dit(sd):
        sd = _rename(diffusers_to_official_dit, sd, path)
    return sd, config


def load_dit(path: str | Path, dtype: torch.dtype | None = None, device="cpu", config: DiTConfig | None = None):
    """The reference `WanDiT` with the checkpoint's weights (cast to `dtype`, default: as stored)."""
    from ..reference.dit import WanDiT
    from .dit_format import infer_dit_config

    sd, config_json = read_dit_state_dict(path)
    cfg = config or _infer(infer_dit_config, sd, path, config_json)
    with torch.device("meta"):
        model = WanDiT(cfg, compute_dtype=dtype or torch.float32)
    return load_into(model, sd, dtype=dtype, device=device, source=str(path), consume=True).eval().requires_grad_(False)


def read_vae_state_dict(path: str | Path) -> dict:
    from .vae_format import diffusers_to_official_vae

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"VAE checkpoint not found: {path}")
    if path.is_dir():
        if (path / ORIGINAL_VAE).is_file():
            path = path / ORIGINAL_VAE
        elif any(path.glob(f"{DIT_STEM}*.safetensors")):
            pass  # a diffusers vae/ folder
        else:
            vae = detect_layout(path).vae
            if vae is None:
                raise CheckpointError(f"{path}: no VAE found (expected {ORIGINAL_VAE} or a vae/ folder)")
            path = vae
    sd = read_sharded(path, DIT_STEM) if path.is_dir() else read_weights(path)
    if any(k.startswith(("encoder.conv_in", "decoder.conv_in", "quant_conv", "post_quant_conv")) for k in sd):
        sd = _rename(diffusers_to_official_vae, sd, path)
    return sd


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu", config: VAEConfig | None = None):
    """The reference `WanVAE` (fp32 by default, as the official runs it)."""
    from ..reference.vae import WanVAE
    from .vae_format import infer_vae_config

    sd = read_vae_state_dict(path)
    cfg = config or _infer(infer_vae_config, sd, path)
    with torch.device("meta"):
        model = WanVAE(cfg)
    return load_into(model, sd, dtype=dtype, device=device, source=str(path), consume=True).eval().requires_grad_(False)


def load_text_encoder(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu", text_len: int = 512,
                      tokenizer: str | Path | None = None):
    """The umT5 `TextEncoder` (weights + tokenizer) from a model root in either layout.

    `path` may also be the weights alone (`models_t5_umt5-xxl-enc-bf16.pth` or a `text_encoder/`
    folder), in which case `tokenizer` names the tokenizer folder.
    """
    from ..reference.text_encoder import TextEncoder

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
        return TextEncoder.from_files(weights, tokenizer, text_len=text_len, dtype=dtype, device=device)
    except KeyError as e:  # the format module names the key that belongs to no umT5 encoder
        raise CheckpointError(f"{weights}: {e.args[0] if e.args else e}") from None
