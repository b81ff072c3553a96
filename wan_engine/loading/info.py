"""`wan-engine info`: what a model directory holds, read from tensor shapes without loading weights."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .checkpoint import read_safetensors_shapes
from .fingerprint import dit_fingerprint
from .layout import DIT_STEM, detect_layout


def describe_model(path: str | Path) -> str:
    from ..configs import preset_for
    from .dit_format import diffusers_to_official_dit, infer_dit_config
    from .state_dicts import is_diffusers_dit

    layout = detect_layout(path)
    shapes = read_safetensors_shapes(layout.dit_dir, DIT_STEM)
    if is_diffusers_dit(shapes):
        shapes = diffusers_to_official_dit(shapes)
    cfg = infer_dit_config(shapes, layout.dit_config)
    preset = preset_for(cfg.dim, cfg.task, Path(path).expanduser().resolve().name, layout.has_experts)
    params = sum(t.numel() for t in shapes.values())
    lines = [layout.describe(),
             f"{'model':>13}: {cfg.task} ({preset.name if preset else 'custom size'}), "
             f"{_count(params)} DiT parameters",
             f"{'dit config':>13}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())]
    if layout.has_experts:
        boundary = layout.boundary if layout.boundary is not None else "the preset's (0.875 for T2V-A14B)"
        lines.append(f"{'experts':>13}: two experts (Wan2.2 A14B), each with the parameters above; the high-noise "
                     f"one runs the steps at or above boundary {boundary} x 1000")
    folders = [("dit weights", layout.dit_dir)] if not layout.has_experts else [
        ("high weights", layout.dit_dir), ("low weights", layout.low_noise_dit_dir)]
    for name, folder in folders:  # what an export of this model records and its runs compare
        lines.append(f"{name:>13}: fingerprint {dit_fingerprint(folder).rpartition(':')[2][:12]}")
    if cfg.task == "ti2v":
        lines.append(f"{'conditioning':>13}: text, and optionally a first frame (--image) whose {cfg.out_dim} "
                     f"latent channels stand in for latent frame 0 (Wan2.2 TI2V; the Wan2.2 VAE)")
    if cfg.model_type != "t2v" and not cfg.uses_clip:
        lines.append(f"{'conditioning':>13}: the first frame (--image); {cfg.in_dim - cfg.out_dim} mask/latent "
                     f"channels, no CLIP features (Wan2.2)")
    elif cfg.model_type != "t2v":
        frames = "the first frame (--image)" if cfg.model_type == "i2v" else \
            "the first and last frames (--image, --last-image)"
        rows = (2 if cfg.model_type == "flf2v" else 1) * cfg.image_tokens
        lines.append(f"{'conditioning':>13}: {frames}; {rows} x {cfg.image_dim} CLIP features + "
                     f"{cfg.in_dim - cfg.out_dim} mask/latent channels")
        if layout.image_encoder is None:
            lines.append(f"{'':>13}  (no image encoder in this folder: the model cannot run without one)")
    return "\n".join(lines)


def _count(n: int) -> str:
    """1.42 B, 3.1 M, 52.3 k: the tiny preset's DiT is not "0.00 B"."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'B' else 1}f} {unit}"
    return str(n)
