"""`wan-engine info`: what a model directory holds, read from tensor shapes without loading weights."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import CheckpointError
from .layout import DIT_STEM, detect_layout


def _shapes_of_safetensors(directory: Path) -> dict:
    """Meta tensors shaped as in the safetensors headers (no tensor data is read).

    safetensors validates each header, including that the file is long enough for the tensors
    it lists, so an empty, corrupt or truncated file is reported by name here as at load time.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob(f"{DIT_STEM}*.safetensors"))
    if not files:
        raise CheckpointError(f"no {DIT_STEM}*.safetensors files in {directory}")
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                shapes.update({k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()})
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: corrupt or truncated safetensors file ({e})") from e
    return shapes


def describe_model(path: str | Path) -> str:
    from .components import is_diffusers_dit
    from .dit_format import diffusers_to_official_dit, infer_dit_config
    from .pipeline_loader import preset_for

    layout = detect_layout(path)
    shapes = _shapes_of_safetensors(layout.dit_dir)
    if is_diffusers_dit(shapes):
        shapes = diffusers_to_official_dit(shapes)
    cfg = infer_dit_config(shapes, layout.dit_config)
    preset = preset_for(cfg.dim, cfg.model_type)
    params = sum(t.numel() for t in shapes.values())
    lines = [layout.describe(),
             f"{'model':>13}: {cfg.model_type} ({preset.name if preset else 'custom size'}), "
             f"{_count(params)} DiT parameters",
             f"{'dit config':>13}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())]
    return "\n".join(lines)



def _count(n: int) -> str:
    """1.42 B, 3.1 M, 52.3 k: the tiny preset's DiT is not "0.00 B"."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'B' else 1}f} {unit}"
    return str(n)
