"""The executor under `apply_parallel` on 2 and 4 spawned gloo ranks equals the single-process
executor: Ulysses 2/4, ring 2/4, hybrid 2x2, and CFG parallelism alone or with sequence parallelism.

Each rank builds the same seeded model twice (one plain executor, one with the mesh applied), runs
both on the same inputs, and reports the relative L2 distance of the velocities. fp32 throughout:
the parallel forward differs from the single-process one only in the order of fp32 sums (attention
split into blocks and merged by log-sum-exp, GEMMs over fewer rows), ~1e-7 relative; 1e-5 leaves
room for that, while a wrong shard, RoPE slice or branch is off by O(1). The CFG layouts are held
to the default single-process runner, which batches both branches into one forward; that batching
alone moves the guided velocity by ~1e-6 (the guidance 4.5 amplifies c - u). Against the
single-process runner without batching, CFG parallelism alone is bitwise equal (same forwards,
same fp32 combine), for the executor and for the eager reference engine alike.

Token grids of 45 and 16 tokens: 45 is divisible by neither 2 nor 4, so every layout pads, and the
padding (embedded zero patches, i.e. non-zero keys) must be kept out of attention through kv_len.
A control run with kv_len dropped shows that a leak would be caught.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch

from sp_harness import rel_l2, run_ranks_ok
from wan_engine.configs import DiTConfig
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel import (
    MeshCoord,
    ParallelConfig,
    ParallelMesh,
    SequenceParallelAttention,
    apply_parallel,
)
from wan_engine.reference.dit import WanDiT
from wan_engine.runner import make_guided_velocity

REL_TOL = 1e-5
# 4 heads of 16: Ulysses 4 needs a head count divisible by 4 (the tiny preset has 2).
CONFIG = DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, text_dim=32, freq_dim=256)
GUIDANCE = 4.5
# name -> (latent F, H, W, explicit seq_len or None); tokens = F * H/2 * W/2
GRIDS = {"odd45": (3, 6, 10, None), "even16": (2, 4, 8, None), "odd45_seq50": (3, 6, 10, 50)}
LAYOUTS = {
    2: {"ulysses2": ParallelConfig(ulysses=2), "ring2": ParallelConfig(ring=2), "cfg2": ParallelConfig(cfg=2)},
    4: {"ulysses4": ParallelConfig(ulysses=4), "ring4": ParallelConfig(ring=4),
        "hybrid2x2": ParallelConfig(ulysses=2, ring=2), "cfg2_ulysses2": ParallelConfig(ulysses=2, cfg=2),
        "cfg2_ring2": ParallelConfig(ring=2, cfg=2)},
}


@dataclass(frozen=True)
class _DropKvLen:
    """Control: a sequence-parallel attention that is told nothing is padding."""

    inner: SequenceParallelAttention

    def __call__(self, q, k, v, *, kv_len=None, return_lse=False):
        return self.inner(q, k, v, kv_len=None, return_lse=return_lse)


def _reference() -> WanDiT:
    dit = WanDiT(CONFIG).eval().requires_grad_(False)
    dit.load_state_dict(random_state_dict(dit, seed=3))
    return dit


def _inputs(grid: str, seed: int):
    f, h, w, _ = GRIDS[grid]
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, CONFIG.in_dim, f, h, w, generator=gen)
    timestep = torch.tensor([870.0, 310.0])
    context = torch.randn(2, 7, CONFIG.text_dim, generator=gen)
    context_null = torch.randn(2, 3, CONFIG.text_dim, generator=gen)
    return latents, timestep, context, context_null


def dit_suite(rank: int, world_size: int) -> dict:
    """Runs in every spawned rank: {layout: {grid: rel L2 vs single process}} plus the control."""
    reference = _reference()
    single = build_executor(reference, EngineConfig())
    errors: dict[str, dict[str, float]] = {}
    unbatched: dict[str, float] = {}  # CFG layouts vs the single-process runner with cfg_batch=False
    control = None
    for name, config in LAYOUTS[world_size].items():
        mesh = ParallelMesh.build(config, timeout=timedelta(seconds=60))
        parallel = apply_parallel(build_executor(reference, EngineConfig()), mesh)
        errors[name] = {}
        for grid, (*_, seq_len) in GRIDS.items():
            latents, t, context, context_null = _inputs(grid, seed=17)
            with torch.inference_mode():
                if config.cfg == 1:
                    text = single.prepare_text(context)
                    expected = single.predict(latents, t, text)
                    actual = parallel.predict(latents, t, parallel.prepare_text(context), seq_len=seq_len)
                else:
                    expected = make_guided_velocity(single, context, context_null, GUIDANCE)(latents, t)
                    velocity = make_guided_velocity(parallel, context, context_null, GUIDANCE, mesh=mesh)
                    actual = velocity(latents, t)
                    separate = make_guided_velocity(single, context, context_null, GUIDANCE, cfg_batch=False)
                    unbatched[f"{name}-{grid}"] = rel_l2(actual, separate(latents, t))
                    if name == "cfg2":  # the eager reference engine takes the same runner path
                        eager = make_guided_velocity(reference, context, context_null, GUIDANCE, mesh=mesh)
                        expected_eager = make_guided_velocity(reference, context, context_null, GUIDANCE)
                        unbatched[f"cfg2-reference-{grid}"] = rel_l2(eager(latents, t), expected_eager(latents, t))
            assert actual.shape == expected.shape, (name, grid, actual.shape, expected.shape)
            errors[name][grid] = rel_l2(actual, expected)
        if name in ("ring2", "hybrid2x2"):
            parallel.parallelize(_DropKvLen(parallel.self_attention), parallel.shard_plan)
            latents, t, context, _ = _inputs("odd45", seed=17)
            with torch.inference_mode():
                leaked = parallel.predict(latents, t, parallel.prepare_text(context))
                control = rel_l2(leaked, single.predict(latents, t, single.prepare_text(context)))
    return {"errors": errors, "unbatched": unbatched, "control": control}


@pytest.fixture(scope="module")
def launches():
    """{world_size: per-rank results}: one launch of 2 and one of 4 gloo ranks."""
    return {world: run_ranks_ok(world, dit_suite, deadline_s=240.0) for world in LAYOUTS}


CASES = [(world, name, grid) for world, layouts in LAYOUTS.items() for name in layouts for grid in GRIDS]


@pytest.mark.parametrize("world,layout,grid", CASES, ids=[f"{n}-{g}" for _, n, g in CASES])
def test_parallel_forward_equals_single_process(launches, world, layout, grid):
    per_rank = [r["errors"][layout][grid] for r in launches[world]]
    print(f"{layout} {grid}: rel L2 per rank {['%.2e' % e for e in per_rank]}")
    assert max(per_rank) <= REL_TOL, per_rank


def test_cfg_parallel_alone_is_bitwise_the_unbatched_single_process_runner(launches):
    per_rank = [r["unbatched"] for r in launches[2]]
    print(f"cfg layouts vs unbatched single process: {per_rank[0]} (world 2), {launches[4][0]['unbatched']}")
    for errors in per_rank:
        assert all(e == 0.0 for key, e in errors.items() if key.startswith("cfg2-")), errors


@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_padding_that_leaked_into_attention_would_be_caught(launches, world):
    controls = [r["control"] for r in launches[world]]
    print(f"world {world}: rel L2 with kv_len dropped {controls}")
    assert min(controls) > 100 * REL_TOL, controls


# --- one process: validation and the degree-1 path -----------------------------------------------


def _fake_mesh(config: ParallelConfig) -> ParallelMesh:
    # No process group is needed: apply_parallel must refuse before touching any group.
    return ParallelMesh(config=config, rank=0, coord=MeshCoord(0, 0, 0))


def test_single_process_mesh_leaves_the_executor_unchanged():
    reference = _reference()
    plain = build_executor(reference, EngineConfig())
    applied = apply_parallel(build_executor(reference, EngineConfig()), ParallelMesh.single())
    assert applied.shard_plan is None and applied.self_attention is applied.ops.attention
    latents, t, context, _ = _inputs("odd45", seed=5)
    with torch.inference_mode():
        a = applied.predict(latents, t, applied.prepare_text(context))
        b = plain.predict(latents, t, plain.prepare_text(context))
    assert torch.equal(a, b)


def test_ulysses_degree_that_does_not_divide_the_heads_is_refused_with_a_hint():
    executor = build_executor(_reference(), EngineConfig())
    with pytest.raises(ValueError, match=r"ulysses=8 does not divide num_heads=4.*--ulysses 4 --ring 2"):
        apply_parallel(executor, _fake_mesh(ParallelConfig(ulysses=8)))
    assert executor.shard_plan is None  # refused before anything changed


def test_apply_parallel_refuses_what_it_cannot_parallelize():
    with pytest.raises(ValueError, match="engine='executor'"):
        apply_parallel(_reference(), ParallelMesh.single())
    with pytest.raises(ValueError, match="mesh must be a ParallelMesh"):
        apply_parallel(build_executor(_reference(), EngineConfig()), ParallelConfig(ulysses=2))
