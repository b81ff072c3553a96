"""pytest-benchmark cases for one DiT forward: the eager reference vs the executor (vs the executor
with torch.compile, GPU only), on seeded random weights.

    pytest bench/test_bench_dit.py --benchmark-only          # CPU: 1.3B width, 1 layer, 48 tokens
    pytest bench/test_bench_dit.py --benchmark-only --benchmark-json out.json   # GPU: 1.3B and 14B, 480p

GPU shapes: 81 frames at 832x480 (32,760 tokens), batch 2 (the CFG pair), every layer of the
model. Each case checks the output against the reference before it is timed, so a fast wrong
executor fails instead of scoring; `extra_info` holds the FLOPs, TFLOP/s and that error.
"""
import dataclasses

import pytest
import torch

from wan_engine.bench.dit import GRID_480P, TEXT_TOKENS, bench_dit, reference_dit, video_size_for_grid
from wan_engine.bench.roofline import dit_forward_cost
from wan_engine.configs import get_preset
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import WanDiT

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
# (preset, token grid, layers)
CASES = ([("t2v-1.3B", GRID_480P, None), ("t2v-14B", GRID_480P, None)] if ON_GPU
         else [("t2v-1.3B", (2, 4, 6), 1)])
# bf16 on GPU: executor and reference each round differently (~3e-3 apart per the CPU tests,
# growing with depth); fp32 on CPU: summation order only.
MATCH_REL_L2 = 5e-2 if ON_GPU else 1e-5
IMPLS = ["reference", "executor",
         pytest.param("executor+compile", marks=pytest.mark.skipif(not ON_GPU, reason="GPU only (slow CPU build)"))]


def _rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}")
def case(request):
    preset, grid, layers = request.param
    cfg = get_preset(preset).dit
    cfg = dataclasses.replace(cfg, num_layers=layers or cfg.num_layers)
    with torch.device("meta"):
        shape_model = WanDiT(cfg)
    reference = reference_dit(cfg, random_state_dict(shape_model, 0), DTYPE, DEVICE)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_dim, grid[0], 2 * grid[1], 2 * grid[2], generator=gen).to(DEVICE)
    t = torch.randint(0, 1000, (2,), generator=gen).to(DEVICE)
    context = torch.randn(2, TEXT_TOKENS, cfg.text_dim, generator=gen).to(DEVICE)
    with torch.inference_mode():
        expected = reference(x, t, context)
    flops = dit_forward_cost(cfg, *video_size_for_grid(cfg, grid), batch=2, dtype_bytes=DTYPE.itemsize).flops
    yield dict(cfg=cfg, reference=reference, x=x, t=t, context=context, expected=expected, flops=flops)
    if ON_GPU:
        torch.cuda.empty_cache()


def _call(impl, case):
    if impl == "reference":
        model = case["reference"]
        return lambda: model(case["x"], case["t"], case["context"])
    executor = build_executor(case["reference"], EngineConfig(dtype=DTYPE, compile=impl == "executor+compile"))
    text = executor.prepare_text(case["context"])  # per request, not per step: outside the timing
    return lambda: executor.predict(case["x"], case["t"], text)


def _synchronized(fn):
    def run():
        out = fn()
        if ON_GPU:
            torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("impl", IMPLS)
def test_dit_forward(benchmark, case, impl):
    with torch.inference_mode():
        fn = _synchronized(_call(impl, case))
        err = _rel_l2(fn(), case["expected"])  # also the compile / warm-up call
        assert err <= MATCH_REL_L2, f"{impl}: rel L2 {err:.3g} vs the reference"
        benchmark.extra_info.update(flops=case["flops"], rel_l2_vs_reference=err, device=str(DEVICE),
                                    dtype=str(DTYPE), layers=case["cfg"].num_layers)
        benchmark.pedantic(fn, rounds=10 if ON_GPU else 3, warmup_rounds=2 if ON_GPU else 1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["tflops"] = case["flops"] / benchmark.stats.stats.median / 1e12


def test_bench_dit_rows():
    """The function behind `python -m wan_engine.bench.dit`, at CPU size (GPU: 1 layer at 480p)."""
    rows = bench_dit("t2v-1.3B", grid=None if ON_GPU else (1, 2, 3), layers=1, repeats=1, warmup=0,
                     compile=False)
    assert [r["impl"] for r in rows] == ["reference", "executor"]
    for row in rows:
        assert row["p20_ms"] <= row["median_ms"] <= row["p80_ms"] and row["tflops"] > 0
        assert row["layers"] == 1 and row["batch"] == 2
    assert rows[1]["rel_l2"] <= (2e-2 if ON_GPU else 1e-5)  # vs the fp32 reference
