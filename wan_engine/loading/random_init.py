"""Seeded random weights for a module, used by the `tiny` preset and by tests.

Official initialisation zeroes the DiT head and the modulation tables, which would make every
output trivially zero; tests need every parameter to matter, so each tensor is drawn at a scale
that keeps activations O(1): fan-in scaled normals for weights, small normals for biases and
modulation tables, and 1 + small noise for norm gains.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _draw(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) <= 1:
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        is_gain = leaf in ("gamma", "weight") or "norm" in name
        return 1.0 + 0.1 * noise if is_gain and leaf != "bias" else 0.05 * noise
    if "modulation" in name or "scale_shift_table" in name:
        return 0.1 * torch.randn(shape, generator=gen, dtype=torch.float32)
    if "embedding" in leaf or "embed_tokens" in name or name.endswith("shared.weight"):
        return torch.randn(shape, generator=gen, dtype=torch.float32)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen, dtype=torch.float32) / math.sqrt(fan_in)


def random_state_dict(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full state dict for `module` (which may live on the meta device), drawn from `seed`.

    Tensors are drawn in name order on the CPU in fp32, so the result does not depend on the
    device, dtype or thread count.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    return {k: _draw(k, shapes[k], gen) for k in sorted(shapes)}
