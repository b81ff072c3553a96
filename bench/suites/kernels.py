"""`--suite kernels`: the fused Triton kernels vs the torch ops they replace (bench/kernels.py).

Shapes are the run's DiT block: [batch, video tokens, dim] with the preset's heads. On the CPU
the kernels run under Triton's interpreter, so tokens are capped at CPU_MAX_TOKENS there (the
numbers only prove the plumbing). Timing and GB/s come from `bench.kernels.bench_kernels`;
this suite adds the roofline columns (the ops are memory-bound: 0 FLOPs, compulsory bytes) and
the accuracy of each Triton output against the eager torch ops, which compute in fp32 and round
to the output dtype (the kernels' oracle).
"""
from __future__ import annotations

import torch

from ..accuracy import compare_tensors
from ..roofline import dit_tokens
from ..timing import TimingStats
from .common import BenchContext, SuiteResult, dtype_name, make_row, single_cost

SUITE = "kernels"
CPU_MAX_TOKENS = 64


def bench_shape(ctx: BenchContext):
    from ..kernels import BenchShape

    cfg = ctx.dit_config
    tokens = dit_tokens(cfg, ctx.width, ctx.height, ctx.frames)
    if ctx.device.type != "cuda":
        tokens = min(tokens, CPU_MAX_TOKENS)
    return BenchShape(ctx.batch, tokens, cfg.dim, cfg.num_heads)


def _flat(out) -> torch.Tensor:
    parts = out if isinstance(out, tuple) else (out,)
    return torch.cat([p.detach().double().flatten() for p in parts])


def triton_accuracy(shape, dtype: torch.dtype, device: torch.device) -> dict[str, dict]:
    """Per op: compare_tensors(Triton output, eager torch output) on bench/kernels.py's inputs."""
    from ..kernels import op_cases

    accuracy = {}
    for op, case in op_cases(shape, dtype, device).items():
        out = case.kernel(*case.args, **case.kwargs)
        ref = case.reference(*case.args, **case.kwargs)
        accuracy[op] = compare_tensors(_flat(out), _flat(ref))
    return accuracy


def _stats(row: dict, repeats: int, warmup: int) -> TimingStats:
    """TimingStats from a bench_kernels row, which reports median/p20/p80 only (its mean, min and
    max fields are filled with those, not measured)."""
    median, p20, p80 = (row[k] / 1e3 for k in ("median_ms", "p20_ms", "p80_ms"))
    timer = "cuda-events" if row["device"] == "cuda" else "perf_counter"
    return TimingStats(median_s=median, p20_s=p20, p80_s=p80, mean_s=median, min_s=p20, max_s=p80,
                       repeats=repeats, warmup=warmup, timer=timer, samples_s=())


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    try:
        from ..kernels import bench_kernels, default_providers
    except ImportError as err:
        result.notes.append(f"kernels: bench/kernels.py or the Triton kernels are unavailable ({err})")
        return result
    shape = bench_shape(ctx)
    full_tokens = dit_tokens(ctx.dit_config, ctx.width, ctx.height, ctx.frames)
    if shape.seq < full_tokens:
        result.notes.append(f"kernels: tokens capped at {shape.seq} of {full_tokens} on {ctx.device.type} "
                            f"(Triton interpreter)")
    providers = tuple(p for p in default_providers(ctx.device) if ctx.compile or p != "torch.compile")
    copy_gbps = ctx.ceilings.copy_gbps if ctx.ceilings else None
    try:
        accuracy = triton_accuracy(shape, ctx.dtype, ctx.device)
    except Exception as err:  # noqa: BLE001 - e.g. no GPU and no interpreter
        result.notes.append(f"kernels: Triton unavailable here ({type(err).__name__}: {str(err)[:160]}); "
                            f"timing the torch ops only")
        accuracy, providers = {}, tuple(p for p in providers if p != "triton")
    rows = bench_kernels([shape], ctx.dtype, ctx.device, ctx.repeats, ctx.warmup, providers=providers,
                         copy_gbps=copy_gbps)
    label = f"B{shape.batch} S{shape.seq} dim{shape.dim} H{shape.num_heads}"
    for r in rows:
        is_oracle = r["provider"] == "torch"
        acc = accuracy.get(r["op"]) if r["provider"] == "triton" else None
        if r["provider"] == "torch.compile":
            acc = {"max_abs": r["max_abs_diff_vs_torch"]}
        extras = {k: r[k] for k in ("speedup_vs_torch", "speedup_vs_torch_compile", "pct_of_copy") if k in r}
        result.rows.append(make_row(
            ctx, SUITE, r["op"], r["provider"], _stats(r, ctx.repeats, ctx.warmup), shape=label,
            dtype=dtype_name(ctx.dtype), cost=single_cost(r["op"], 0, r["bytes"]), accuracy=acc,
            oracle="(is the oracle)" if is_oracle else "eager torch ops (fp32 compute)", **extras))
    return result
