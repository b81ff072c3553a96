"""`--suite kernels`: the fused Triton kernels vs the torch ops they replace (bench/kernels.py).

Shapes are the run's DiT block: [batch, video tokens, dim] with the preset's heads. On the CPU
the kernels run under Triton's interpreter, so tokens are capped at CPU_MAX_TOKENS there (the
numbers only prove the plumbing). Timing and GB/s come from `bench.kernels.bench_kernels`;
this suite adds the roofline columns (the ops are memory-bound: 0 FLOPs, compulsory bytes) and
the accuracy of each Triton output against the eager torch ops, which compute in fp32 and round
to the output dtype (the kernels' oracle), judged by `bench.bounds.kernel_bound` (one ulp of the
dtype per element plus fp32 reduction order). A kernel that raises is a FAIL row; the Triton
kernels are the product here, so no fallback hides them.
"""
from __future__ import annotations

import torch

from ..accuracy import compare_tensors
from ..bounds import kernel_bound
from ..roofline import dit_tokens
from ..timing import TimingStats
from .common import BenchContext, SuiteResult, crash_row, dtype_name, make_row, single_cost

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


def triton_accuracy(shape, dtype: torch.dtype, device: torch.device, ops=None) -> dict[str, dict]:
    """Per op: compare_tensors(Triton output, eager torch output) on bench/kernels.py's inputs."""
    from ..kernels import op_cases

    accuracy = {}
    for op, case in op_cases(shape, dtype, device).items():
        if ops is not None and op not in ops:
            continue
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
    from ..kernels import OPS, bench_kernels, default_providers

    shape = bench_shape(ctx)
    full_tokens = dit_tokens(ctx.dit_config, ctx.width, ctx.height, ctx.frames)
    if shape.seq < full_tokens:
        result.notes.append(f"kernels: tokens capped at {shape.seq} of {full_tokens} on {ctx.device.type} "
                            f"(Triton interpreter)")
    providers = tuple(p for p in default_providers(ctx.device) if ctx.compile or p != "torch.compile")
    copy_gbps = ctx.ceilings.copy_gbps if ctx.ceilings else None
    label = f"B{shape.batch} S{shape.seq} dim{shape.dim} H{shape.num_heads}"
    dtype = dtype_name(ctx.dtype)
    bound = kernel_bound(ctx.dtype)
    for op in OPS:
        # One op at a time, so a kernel that fails is that op's FAIL row and the rest still run.
        op_providers = providers
        try:
            accuracy = triton_accuracy(shape, ctx.dtype, ctx.device, ops=(op,))[op]
        except Exception as err:  # noqa: BLE001 - a kernel that raises is a failed row
            result.rows.append(crash_row(ctx, SUITE, op, "triton", err, shape=label, dtype=dtype))
            accuracy, op_providers = None, tuple(p for p in providers if p != "triton")
        try:
            rows = bench_kernels([shape], ctx.dtype, ctx.device, ctx.repeats, ctx.warmup, providers=op_providers,
                                 ops=(op,), copy_gbps=copy_gbps)
        except Exception as err:  # noqa: BLE001 - timing failed: every provider of this op fails
            result.rows += [crash_row(ctx, SUITE, op, p, err, shape=label, dtype=dtype) for p in op_providers]
            continue
        for r in rows:
            provider = r["provider"]
            acc = accuracy if provider == "triton" else None
            if provider == "torch.compile":
                acc = {"max_abs": r["max_abs_diff_vs_torch"]}
            extras = {k: r[k] for k in ("speedup_vs_torch", "speedup_vs_torch_compile", "pct_of_copy") if k in r}
            result.rows.append(make_row(
                ctx, SUITE, r["op"], provider, _stats(r, ctx.repeats, ctx.warmup), shape=label, dtype=dtype,
                cost=single_cost(r["op"], 0, r["bytes"]), accuracy=acc,
                bound=bound if provider == "triton" else None,
                oracle="(is the oracle)" if provider == "torch" else "eager torch ops (fp32 compute)", **extras))
    return result
