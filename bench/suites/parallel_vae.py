"""The parallel suite's VAE rows: the row-parallel decode and encode (parallel/vae_decode.py,
parallel/vae_encode.py) on every spawned rank, against the same call on one rank alone.

Each rank decodes seeded random latents and encodes a seeded random video, first alone (the
official chunked `WanVAE.decode` / `encode`), then with the latent rows split over the ranks.
Per call: the time, the peak working memory on that rank (CUDA's allocator peak; on the CPU the
exact live-tensor peak of `bench/live_memory.py`, taken in an extra untimed call) and the output
against the one-rank output, compared on the rank (a 720p video is too large to ship to the
parent). On the CPU the video is cut to CPU_MAX_LATENT so that the gloo run stays in seconds:
plumbing and memory only, not GPU scaling.
"""
from __future__ import annotations

import torch

from ..accuracy import compare_tensors
from ..bounds import vae_tensor_bound
from ..live_memory import LiveBytes
from ..roofline import vae_decode_cost, vae_encode_cost
from .common import BenchContext, SuiteResult, dtype_name, exact_fp32, make_row, single_cost

CASES = ("vae decode", "vae encode")
CPU_MAX_LATENT = (3, 8, 8)  # latent frames, rows, cols on the CPU: 9 frames of 64x64


def vae_context(ctx: BenchContext, backend: str, result: SuiteResult) -> BenchContext:
    """The context the ranks decode and encode at: the run's own on NCCL, cut on gloo."""
    if backend == "nccl":
        return ctx
    lf, lh, lw = ctx.latent_grid
    cut = tuple(min(a, b) for a, b in zip((lf, lh, lw), CPU_MAX_LATENT))
    cfg = ctx.model.vae
    small = ctx.replace(frames=1 + (cut[0] - 1) * cfg.temporal_stride, height=cut[1] * cfg.spatial_stride,
                        width=cut[2] * cfg.spatial_stride, dtype=torch.float32)
    if (small.width, small.height, small.frames) != (ctx.width, ctx.height, ctx.frames):
        result.notes.append(f"parallel: VAE rows at {small.size_label} on the CPU (the run's {ctx.size_label} "
                            f"would take minutes on gloo)")
    return small


def peak_working_mib(device: torch.device, fn) -> float:
    """MiB the call allocates above what was live before it, at its peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with LiveBytes() as live:
        fn()
    return live.peak / 2**20


def rank_vae_calls(ctx: BenchContext, group, timed) -> dict:
    """On one rank of `group`: time each call through `timed(name, fn)` and return, per
    "<case> <impl>", its peak working MiB and (for the parallel impls) its accuracy against the
    one-rank output."""
    from wan_engine.parallel.comm import group_size
    from wan_engine.parallel.vae_decode import parallel_vae_decode
    from wan_engine.parallel.vae_encode import parallel_vae_encode

    from .vae import random_vae_weights, reference_vae

    cfg = ctx.model.vae
    model = reference_vae(cfg, random_vae_weights(cfg, ctx.seed + 1), ctx.dtype, ctx.device)
    gen = torch.Generator().manual_seed(ctx.seed + 302)  # the same inputs on every rank
    latents = torch.randn(1, cfg.z_dim, *ctx.latent_grid, generator=gen).to(ctx.device, ctx.dtype)
    video = (torch.rand(1, 3, ctx.frames, ctx.height, ctx.width, generator=gen) * 2 - 1).to(ctx.device, ctx.dtype)
    parallel = f"rows-{group_size(group)}"
    calls = {("vae decode", "vae-1"): lambda: model.decode(latents),
             ("vae decode", parallel): lambda: parallel_vae_decode(model, latents, group),
             ("vae encode", "vae-1"): lambda: model.encode(video),
             ("vae encode", parallel): lambda: parallel_vae_encode(model, video, group)}
    # A full-size decode takes seconds on a GPU: one warm-up and one timed call, as the vae suite's paths.
    counts = dict(repeats=1, warmup=1) if ctx.device.type == "cuda" else {}
    report, alone = {}, {}
    with torch.inference_mode(), exact_fp32(ctx.device):
        for (case, impl), call in calls.items():
            out = timed(f"{case} {impl}", call, **counts)
            entry = report[f"{case} {impl}"] = {"peak_mib": peak_working_mib(ctx.device, call)}
            if impl == "vae-1":
                alone[case] = out
            else:
                entry["accuracy"] = compare_tensors(out.double(), alone[case].double())
            out = None
    return report


def vae_rows(ctx: BenchContext, vae_ctx: BenchContext, result: SuiteResult, times: dict, reports: list[dict],
             backend: str, world: int) -> None:
    """Rows of the decode and encode, one rank alone and row-parallel: time and rates of one rank,
    the largest per-rank peak, the worst rank's accuracy, speedup and scaling efficiency."""
    cfg = vae_ctx.model.vae
    size = torch.empty((), dtype=vae_ctx.dtype).element_size()
    costs = {"vae decode": vae_decode_cost(cfg, vae_ctx.width, vae_ctx.height, vae_ctx.frames, 1, size),
             "vae encode": vae_encode_cost(cfg, vae_ctx.width, vae_ctx.height, vae_ctx.frames, 1, size)}
    lf, lh, lw = vae_ctx.latent_grid
    shape = f"{vae_ctx.size_label} latent {lf}x{lh}x{lw}"
    for case in CASES:
        if (case, "vae-1") not in times:
            continue
        base, base_peak = times[case, "vae-1"].median_s, max(r[f"{case} vae-1"]["peak_mib"] for r in reports)
        for impl in ["vae-1"] + [i for c, i in times if c == case and i != "vae-1"]:
            stats, name = times[case, impl], f"{case} {impl}"
            peak = max(r[name]["peak_mib"] for r in reports)
            ranks = 1 if impl == "vae-1" else world
            accuracy, oracle, bound = None, "(is the oracle)", None
            note = f"{backend}, one rank alone"
            if ranks > 1:
                worst = max((r[name]["accuracy"] for r in reports), key=lambda a: a["rel_l2"])
                accuracy, oracle, bound = worst, "the same call on one rank (worst rank)", vae_tensor_bound(vae_ctx.dtype)
                note = (f"{backend}: speedup {base / stats.median_s:.2f}x, scaling efficiency "
                        f"{100 * base / (ranks * stats.median_s):.0f}%, peak per rank {peak / base_peak:.2f}x "
                        f"one rank's (rates: per-rank share)")
            cost = costs[case]
            result.rows.append(make_row(
                ctx, "parallel", case, impl, stats, shape=shape, dtype=dtype_name(vae_ctx.dtype),
                cost=single_cost(case, cost.flops / ranks, cost.bytes / ranks), accuracy=accuracy, oracle=oracle,
                note=note, bound=bound, peak_mem_mib=peak))
