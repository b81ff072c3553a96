"""Sequence and CFG parallelism on NCCL, one process per GPU, against one process (marker
`multigpu`: skipped with a reason below 2 GPUs; the 4-rank layouts below 4 GPUs).

Layouts: Ulysses-2, ring-2, CFG-2 on 2 GPUs; with 4 GPUs also Ulysses-2 x ring-2, Ulysses-4,
ring-4 and CFG-2 with Ulysses-2 or ring-2 (tests/parallel/nccl_workers.py). Each in fp32 and bf16,
on a 45-token grid (padded on every layout: the padding must stay out of attention) and a
16-token one.

Tolerance, from the dtype (bench/bounds.py `optimized_bound`): against the fp32 eager reference,
the parallel run may be at most twice as wrong as the single-process executor in the same dtype,
plus one rounding of the dtype and the fp32 accumulation-order term (16 L ulps), those two
scaled by the guidance amplification for the CFG layouts. In bf16 that is ~2 x 3e-3 + 4e-3; in
fp32 (the single process is then ~1e-7 from the oracle) ~2e-6, while a wrong shard, RoPE slice,
leaked padding key or swapped CFG branch is off by O(1).
"""
from __future__ import annotations

import pytest
import torch

from nccl_workers import CONFIG, DTYPES, GRIDS, GUIDANCE, LAYOUTS, layout_suite
from sp_harness import run_ranks_ok
from wan_engine.bench.bounds import guidance_amplification, optimized_bound

pytestmark = pytest.mark.multigpu


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def launch():
    """world -> per-rank results, one NCCL launch per world size, made when first needed."""
    done: dict[int, list] = {}

    def get(world: int) -> list:
        if _gpus() < world:
            pytest.skip(f"the {world}-rank layouts need {world} GPUs, found {_gpus()}")
        if world not in done:
            done[world] = run_ranks_ok(world, layout_suite, "nccl", backend="nccl", deadline_s=300.0)
        return done[world]

    return get


CASES = [(world, layout, dtype, grid) for world, layouts in LAYOUTS.items() for layout in layouts
         for dtype in DTYPES for grid in GRIDS]


@pytest.mark.parametrize("world,layout,dtype,grid", CASES, ids=[f"{l}-{d}-{g}" for _, l, d, g in CASES])
def test_nccl_layout_matches_one_process(launch, world, layout, dtype, grid):
    amplification = guidance_amplification(GUIDANCE) if LAYOUTS[world][layout].cfg == 2 else 1.0
    for rank, results in enumerate(launch(world)):
        m = results[layout][dtype][grid]
        bound = optimized_bound(dtype, CONFIG.num_layers, m["single_vs_oracle"], "one process",
                                amplification=amplification)
        print(f"{layout} {dtype} {grid} rank {rank} ({m['attention']}): parallel {m['parallel_vs_oracle']:.2e}, "
              f"one process {m['single_vs_oracle']:.2e} vs fp32; apart {m['parallel_vs_single']:.2e}; "
              f"bound {bound.limit:.2e}")
        assert m["shape_ok"] and m["finite"], (rank, m)
        assert m["parallel_vs_oracle"] <= bound.limit, (rank, m, bound.rule)
