"""CFG parallelism on 2 and 4 gloo ranks: each rank runs one guidance branch, `cfg_combine` forms
the guided velocity, and it must equal the single-process runner's `u + g * (c - u)` bitwise.

Why bitwise: each rank's branch forward is the same computation on the same inputs as the
single-process forward (same process, same shapes, one thread), the gather moves fp32 values
unchanged, and the combine applies the same fp32 ops in the same order. Any branch swap, shard
mix-up or extra rounding (e.g. combining in bf16) shows up as a mismatch.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sp_harness import run_ranks_ok
from wan_engine.configs import TINY_DIT
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel import (
    COND_BRANCH,
    UNCOND_BRANCH,
    ParallelConfig,
    ParallelMesh,
    branch_context,
    cfg_branch,
    cfg_combine,
    split_sequence,
)
from wan_engine.reference.dit import WanDiT

GUIDANCE = 5.0
LAYOUTS = {2: [ParallelConfig(cfg=2)], 4: [ParallelConfig(ulysses=2, cfg=2), ParallelConfig(ring=2, cfg=2)]}
SIGMAS = (0.99, 0.7, 0.4, 0.0)  # three Euler steps of a toy flow schedule


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """The single-process rule (official generate loop, wan_engine.runner.cfg_denoise)."""
    v_cond, v_uncond = v_cond.float(), v_uncond.float()
    return v_uncond + guidance * (v_cond - v_uncond)


def _inputs():
    gen = torch.Generator().manual_seed(11)
    latents = torch.randn(1, TINY_DIT.in_dim, 2, 6, 10, generator=gen)
    context = torch.randn(1, 7, TINY_DIT.text_dim, generator=gen)
    context_null = torch.randn(1, 5, TINY_DIT.text_dim, generator=gen)
    return latents, context, context_null


def _denoise(step_velocity, latents):
    """Euler over SIGMAS; `step_velocity(latents, t)` returns the guided velocity."""
    for sigma, sigma_next in zip(SIGMAS[:-1], SIGMAS[1:]):
        t = torch.tensor([sigma * 1000.0])
        latents = latents + (sigma_next - sigma) * step_velocity(latents, t)
    return latents


def cfg_worker(rank: int, world_size: int) -> dict:
    dit = WanDiT(TINY_DIT).eval()
    dit.load_state_dict(random_state_dict(dit, seed=5))
    latents, context, context_null = _inputs()
    results = {}
    for config in LAYOUTS[world_size]:
        mesh = ParallelMesh.build(config)
        r = results[str(config)] = {"branch": cfg_branch(mesh), "cfg_rank": mesh.cfg_rank}
        with torch.no_grad():
            # DiT forward on this rank's branch only, combined over the cfg group, three steps.
            mine = _denoise(lambda x, t: cfg_combine(
                dit(x, t, branch_context(mesh, context, context_null)), mesh, GUIDANCE), latents)
            single = _denoise(lambda x, t: guided(dit(x, t, context), dit(x, t, context_null), GUIDANCE),
                              latents)
        r["denoise_equal"] = bool(torch.equal(mine, single))
        r["denoise_max_abs"] = float((mine - single).abs().max())

        # Sequence shards of bf16 branch outputs: combined per shard, in fp32.
        gen = torch.Generator().manual_seed(21)
        v_cond, v_uncond = torch.randn(2, 1, 13, 6, generator=gen).to(torch.bfloat16).unbind(0)
        own = v_cond if mesh.cfg_rank == COND_BRANCH else v_uncond
        out = cfg_combine(split_sequence(own, mesh.sp_group), mesh, 3.5)
        r["shard_dtype"] = str(out.dtype)
        expected = split_sequence(guided(v_cond, v_uncond, 3.5), mesh.sp_group)
        r["shard_equal"] = bool(torch.equal(out, expected))
        swapped = split_sequence(guided(v_uncond, v_cond, 3.5), mesh.sp_group)
        r["differs_from_swapped"] = not torch.equal(out, swapped)
        # Every rank of the cfg group holds the same result.
        both = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(both, out, group=mesh.cfg_group)
        r["identical_in_group"] = bool(torch.equal(both[0], both[1]))
    return results


@pytest.fixture(scope="module")
def launches():
    return {world: run_ranks_ok(world, cfg_worker) for world in LAYOUTS}


CASES = [(world, str(config)) for world, configs in LAYOUTS.items() for config in configs]


@pytest.mark.parametrize("world,layout", CASES, ids=[c for _, c in CASES])
def test_cfg_parallel_equals_single_process(launches, world, layout):
    for rank, results in enumerate(launches[world]):
        r = results[layout]
        assert r["branch"] == r["cfg_rank"] and r["branch"] in (COND_BRANCH, UNCOND_BRANCH), r
        assert r["denoise_equal"], (rank, r)
        assert r["shard_equal"] and r["shard_dtype"] == "torch.float32", (rank, r)
        assert r["differs_from_swapped"] and r["identical_in_group"], (rank, r)
    branches = sorted(results[layout]["branch"] for results in launches[world])
    assert branches == [0] * (world // 2) + [1] * (world // 2)  # half the ranks per branch


def test_cfg_parallel_needs_two_branches():
    mesh = ParallelMesh.single()
    for call in (lambda: cfg_branch(mesh), lambda: cfg_combine(torch.zeros(2), mesh, 5.0),
                 lambda: branch_context(mesh, torch.zeros(1), torch.ones(1))):
        with pytest.raises(ValueError, match="needs a mesh with cfg=2, got cfg=1"):
            call()


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), True, "5", None])
def test_bad_guidance_is_refused(guidance):
    # A cfg=2 mesh object is enough: validation happens before any communication.
    mesh = ParallelMesh(config=ParallelConfig(cfg=2), rank=0, coord=ParallelMesh.single().coord)
    with pytest.raises(ValueError, match="guidance must be a finite real number"):
        cfg_combine(torch.zeros(3), mesh, guidance)
