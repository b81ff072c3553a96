"""Code that runs inside the NCCL test ranks (tests/parallel/test_nccl_parallel.py), one GPU each.

Every rank builds the same seeded DiT, runs the single-process executor and the executor under
`apply_parallel` for each layout and dtype on the same inputs, and returns the relative L2 of
both against the fp32 eager reference (the oracle, TF32 off), plus their distance from each
other. Module-level so spawn can pickle it; `backend="gloo"` runs the same code on the CPU.
"""
from __future__ import annotations

from datetime import timedelta

import torch

from sp_harness import rel_l2
from wan_engine.configs import DiTConfig
from wan_engine.device import exact_fp32
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel import ParallelConfig, ParallelMesh, apply_parallel
from wan_engine.reference.dit import WanDiT
from wan_engine.runner import make_guided_velocity

# 4 heads of 16: Ulysses 4 needs a head count divisible by 4.
CONFIG = DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, text_dim=32, freq_dim=256)
GUIDANCE = 4.5
DTYPES = ("fp32", "bf16")
# name -> latent (F, H, W); tokens = F * H/2 * W/2: 45 pads on every layout, 16 needs no padding.
GRIDS = {"odd45": (3, 6, 10), "even16": (2, 4, 8)}
LAYOUTS = {
    2: {"ulysses2": ParallelConfig(ulysses=2), "ring2": ParallelConfig(ring=2), "cfg2": ParallelConfig(cfg=2)},
    4: {"ulysses2x_ring2": ParallelConfig(ulysses=2, ring=2), "ulysses4": ParallelConfig(ulysses=4),
        "ring4": ParallelConfig(ring=4), "cfg2_ulysses2": ParallelConfig(ulysses=2, cfg=2),
        "cfg2_ring2": ParallelConfig(ring=2, cfg=2)},
}


def _inputs(grid: str, device: torch.device):
    """The same on every rank: drawn on the CPU from one seed, then moved."""
    f, h, w = GRIDS[grid]
    gen = torch.Generator().manual_seed(17)
    latents = torch.randn(2, CONFIG.in_dim, f, h, w, generator=gen)
    context = torch.randn(2, 7, CONFIG.text_dim, generator=gen)
    context_null = torch.randn(2, 3, CONFIG.text_dim, generator=gen)
    timestep = torch.tensor([870.0, 310.0])
    return tuple(t.to(device) for t in (latents, timestep, context, context_null))


def _velocities(reference, single, parallel, mesh, inputs):
    """(oracle, one process, parallel) outputs: the velocity, or the guided one for CFG layouts."""
    latents, t, context, context_null = inputs
    if mesh.config.cfg == 1:
        return (reference(latents, t, context), single.predict(latents, t, single.prepare_text(context)),
                parallel.predict(latents, t, parallel.prepare_text(context)))
    return (make_guided_velocity(reference, context, context_null, GUIDANCE)(latents, t),
            make_guided_velocity(single, context, context_null, GUIDANCE)(latents, t),
            make_guided_velocity(parallel, context, context_null, GUIDANCE, mesh=mesh)(latents, t))


def layout_suite(rank: int, world_size: int, backend: str = "nccl") -> dict:
    """{layout: {dtype: {grid: metrics}}} on this rank for every LAYOUTS[world_size] layout."""
    # An exact fp32 oracle: cuDNN convolutions (the patch embedding) default to TF32, and a
    # spawned rank does not get the test session's autouse fixture that turns it off.
    with exact_fp32():
        return _layout_suite(rank, world_size, backend)


def _layout_suite(rank: int, world_size: int, backend: str) -> dict:
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    reference = WanDiT(CONFIG).eval().requires_grad_(False)
    reference.load_state_dict(random_state_dict(reference, seed=3))
    reference = reference.to(device)
    singles = {dtype: build_executor(reference, EngineConfig(dtype=dtype)) for dtype in DTYPES}
    results: dict = {}
    for layout, config in LAYOUTS[world_size].items():
        mesh = ParallelMesh.build(config, timeout=timedelta(seconds=60))
        for dtype in DTYPES:
            parallel = apply_parallel(build_executor(reference, EngineConfig(dtype=dtype)), mesh)
            for grid in GRIDS:
                with torch.inference_mode():
                    oracle, single, actual = _velocities(reference, singles[dtype], parallel, mesh,
                                                         _inputs(grid, device))
                results.setdefault(layout, {}).setdefault(dtype, {})[grid] = dict(
                    single_vs_oracle=rel_l2(single, oracle), parallel_vs_oracle=rel_l2(actual, oracle),
                    parallel_vs_single=rel_l2(actual, single), shape_ok=actual.shape == single.shape,
                    finite=bool(torch.isfinite(actual).all()),
                    attention=parallel.ops.attention.label)
    return results
