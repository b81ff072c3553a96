"""Cached denoising on 2 and 4 spawned gloo ranks: every rank takes the same skip decisions as one
process, and the cached latents equal the one-process cached latents to the uncached tolerance.

Each rank runs the whole loop twice with the same seeded model and inputs: once on a plain
executor in-process (the one-process oracle), once on the executor under the mesh, each with its
own `StepCache` of the same policy. The 45-token grid pads under every sequence-parallel layout,
so the first-block cache's reduction must leave the padded rows out to agree with one process.
Tolerance: the same 1e-5 relative as the uncached parallel forward (test_dit_parallel.py): a
parallel run differs from one process only in fp32 summation order; a wrong residual (another
rank's slice, another branch's) is off by O(1e-1).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from sp_harness import rel_l2, run_ranks_ok
from wan_engine.cache import CacheConfig, Calibration, build_step_cache, published
from wan_engine.configs import DiTConfig
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel import ParallelConfig, ParallelMesh, apply_parallel
from wan_engine.reference.dit import WanDiT
from wan_engine.reference.schedulers import make_solver
from wan_engine.runner import cfg_denoise

REL_TOL = 1e-5
CONFIG = DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=3, text_dim=32, freq_dim=256)
STEPS = 10
# name -> spec. The random model's timestep embedding and first-block residual change by 80-130 %
# between steps (a trained model's by a few), so the thresholds are large here, picked so that each
# schedule mixes computed and reused steps. TeaCache's rescaling is the identity polynomial.
POLICIES = {
    "magcache": "magcache:0.3,K=3,retention=0.1",
    "fbcache": "fbcache:0.9",
    "teacache": "teacache:1.5",
}
CALIBRATION = Calibration("random", "test", {"plain": (0.0, 0.0, 0.0, 1.0, 0.0)},
                          published("t2v-1.3B").magcache_ratios())
LAYOUTS = {
    2: {"ulysses2": ParallelConfig(ulysses=2), "ring2": ParallelConfig(ring=2), "cfg2": ParallelConfig(cfg=2)},
    4: {"hybrid2x2": ParallelConfig(ulysses=2, ring=2), "cfg2_ulysses2": ParallelConfig(ulysses=2, cfg=2),
        "cfg2_ring2": ParallelConfig(ring=2, cfg=2)},
}


def _denoise(dit, cache_spec, mesh=None):
    gen = torch.Generator().manual_seed(11)
    latents = torch.randn(1, CONFIG.in_dim, 3, 6, 10, generator=gen)  # 3 x 3 x 5 = 45 tokens
    context = torch.randn(1, 7, CONFIG.text_dim, generator=gen)
    context_null = torch.randn(1, 3, CONFIG.text_dim, generator=gen)
    solver = make_solver("unipc", STEPS, 5.0)
    cache = None
    if cache_spec is not None:
        config = CacheConfig.parse(cache_spec)
        cache = build_step_cache(config, CALIBRATION, dit, solver.timesteps,
                                 sp_group=None if mesh is None else mesh.sp_group)
    with torch.inference_mode():
        out = cfg_denoise(dit, latents, context, context_null, solver, 5.0, mesh=mesh, step_cache=cache)
    return out, None if cache is None else cache.decisions


def cache_suite(rank: int, world_size: int) -> dict:
    reference = WanDiT(CONFIG).eval().requires_grad_(False)
    reference.load_state_dict(random_state_dict(reference, seed=5))
    single = build_executor(reference, EngineConfig())
    results = {}
    for name, config in LAYOUTS[world_size].items():
        mesh = ParallelMesh.build(config, timeout=timedelta(seconds=60))
        parallel = apply_parallel(build_executor(reference, EngineConfig()), mesh)
        plain_single, _ = _denoise(single, None)
        plain_parallel, _ = _denoise(parallel, None, mesh)
        results[name] = {"uncached": rel_l2(plain_parallel, plain_single), "cfg_rank": mesh.cfg_rank}
        for policy, spec in POLICIES.items():
            expected, expected_decisions = _denoise(single, spec)
            actual, decisions = _denoise(parallel, spec, mesh)
            results[name][policy] = {"error": rel_l2(actual, expected), "decisions": decisions,
                                     "expected": expected_decisions,
                                     "vs_uncached": rel_l2(expected, plain_single)}
    return results


@pytest.fixture(scope="module")
def launches():
    return {world: run_ranks_ok(world, cache_suite, deadline_s=300.0) for world in LAYOUTS}


CASES = [(world, layout, policy) for world, layouts in LAYOUTS.items() for layout in layouts for policy in POLICIES]


@pytest.mark.parametrize("world,layout,policy", CASES, ids=[f"{l}-{p}" for _, l, p in CASES])
def test_every_rank_decides_as_one_process_and_gets_its_latents(launches, world, layout, policy):
    per_rank = [r[layout] for r in launches[world]]
    for result in per_rank:
        case = result[policy]
        own = result["cfg_rank"] if "cfg2" in layout else None
        for branch in (0, 1):
            if own is not None and branch != own:
                assert case["decisions"][branch] == [None] * STEPS  # that branch runs on the other ranks
            else:
                assert case["decisions"][branch] == case["expected"][branch], (branch, case)
        print(f"{layout} {policy}: rel L2 {case['error']:.2e} (uncached layout {result['uncached']:.2e}; "
              f"cached vs uncached {case['vs_uncached']:.2e}); computed {sum(case['expected'][0])}/{STEPS}")
        assert case["error"] <= REL_TOL
        assert case["vs_uncached"] > 100 * REL_TOL  # the cache skipped work: a wrong residual would show
    schedule = per_rank[0][policy]["expected"]
    assert 0 < sum(schedule[0]) < STEPS, schedule  # a mixed schedule: computed and reused steps
