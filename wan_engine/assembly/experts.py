"""The second DiT of a Wan2.2 A14B (two-expert) model: finding, loading and checking it.

Both experts share one architecture; the pipeline runs the high-noise one (`dit`) on the steps at
or above the boundary and the low-noise one (`low_noise_dit`) on the rest. Each expert takes its own
LoRA files (`lora/experts.py`) and, exported, its own folder (`high_noise/`, `low_noise/`); what only
one DiT can take (TeaCache's polynomial) is refused before the load.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..cache import check_cache_for_experts
from ..configs import PRESETS, DiTConfig, ExpertSplit, ModelConfig, get_preset
from ..loading.checkpoint import load_into
from ..loading.errors import CheckpointError
from ..loading.layout import ModelLayout, detect_layout
from ..loading.random_init import random_state_dict
from ..reference.dit import WanDiT
from .components import load_dit

LOW_NOISE_SEED_OFFSET = 4  # a random-weight preset's low-noise expert: seeds seed..seed+3 are taken


def has_experts(path_or_preset) -> bool:
    """Whether a preset, config or model directory is a two-expert model (from names only)."""
    if isinstance(path_or_preset, ModelConfig):
        return path_or_preset.experts is not None
    if str(path_or_preset) in PRESETS:
        return get_preset(str(path_or_preset)).experts is not None
    path = Path(str(path_or_preset)).expanduser()
    return path.is_dir() and detect_layout(path).has_experts


def check_expert_options(path_or_preset, *, cache) -> None:
    """Refuse, before any load, the options that hold for one DiT only."""
    if has_experts(path_or_preset):
        check_cache_for_experts(cache)


def load_low_noise_dit(layout: ModelLayout, high: DiTConfig, dtype: torch.dtype, device) -> WanDiT:
    """The low-noise expert of `layout`, which must have the high-noise expert's architecture."""
    low = load_dit(layout.low_noise_dit_dir, dtype=dtype, device=device)
    if low.config != high:
        raise CheckpointError(f"{layout.root}: the two experts differ in architecture (high noise {high}, low "
                              f"noise {low.config})")
    return low


def random_low_noise_dit(config: ModelConfig, dtype: torch.dtype, device, seed: int) -> WanDiT:
    """A preset's seeded random low-noise expert (its own weights, not a copy of the high-noise one)."""
    with torch.device("meta"):
        dit = WanDiT(config.dit, compute_dtype=dtype)
    dit = load_into(dit, random_state_dict(dit, seed + LOW_NOISE_SEED_OFFSET), dtype=dtype, device=device,
                    source=f"preset {config.name} (low-noise expert)")
    return dit.eval().requires_grad_(False)


def expert_split(layout: ModelLayout, preset: ModelConfig | None) -> ExpertSplit:
    """The boundary of a two-expert directory: the one a diffusers folder records, else its preset's
    (the original layout keeps it in code: 0.875 for T2V-A14B)."""
    if layout.boundary is not None:
        return ExpertSplit(layout.boundary)
    if preset is not None and preset.experts is not None:
        return preset.experts
    return get_preset("t2v-A14B").experts

