"""`wan-engine info`: what a model directory holds, read from tensor shapes without loading weights."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .layout import DIT_STEM, detect_layout


def _shapes_of_safetensors(directory: Path) -> dict:
    """Meta tensors shaped as in the safetensors headers (no tensor data is read)."""
    import struct

    import torch

    shapes = {}
    for f in sorted(directory.glob(f"{DIT_STEM}*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({k: torch.empty(v["shape"], device="meta")
                       for k, v in header.items() if k != "__metadata__"})
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
             f"{params / 1e9:.2f} B DiT parameters",
             f"{'dit config':>13}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())]
    return "\n".join(lines)

