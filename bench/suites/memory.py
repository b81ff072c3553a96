"""`--suite memory`: weights and peak working memory of each stage, measured.

For the DiT forward (reference and executor, the run's batch), the VAE decode and the text
encoding: the bytes of the module's parameters and buffers ("weights"), and the memory the call
added at its peak over what was resident before it:
  GPU  torch.cuda.max_memory_allocated after warm-up and reset_peak_memory_stats (exact,
       allocator-level);
  CPU  the process's peak resident set size during the first call, sampled from /proc (coarse:
       the allocator's free lists and sampling make it a rough figure).
Each measured call is also timed (once: this suite is about memory).
"""
from __future__ import annotations

import time

import torch

from ..roofline import dit_forward_cost, vae_decode_cost
from ..telemetry import MIB, RssSampler
from ..timing import summarize
from .common import (
    REFERENCE_ATTENTION, BenchContext, SuiteResult, dit_inputs, dtype_name, executor_factory, make_row,
    random_dit_weights, reference_dit, release_memory, text_encoder_cost,
)
from .vae import random_vae_weights, reference_vae

SUITE = "memory"
TEXT_ENCODER_DRAW_LIMIT = 1e9  # layers * d_model * d_ff above which random umT5 weights are too slow


def module_bytes(module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory(device: torch.device, fn, warmup: int) -> tuple[float, float | None, str]:
    """(seconds, MiB added at the peak of `fn()`, method) on `device`.

    GPU: after `warmup` calls, so one-time workspaces (cuBLAS, compiled kernels) are not counted.
    CPU: the first call; once glibc's allocator has grown its arenas, later calls reuse them and
    the resident set no longer shows what a call needs.
    """
    if device.type == "cuda":
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / MIB, "cuda allocator peak"
    with RssSampler(interval_s=0.005) as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    if rss.baseline_mib is None:
        return seconds, None, rss.note
    return seconds, rss.peak_mib - rss.baseline_mib, "first call, peak RSS - RSS before (5 ms samples)"


def _stages(ctx: BenchContext, result: SuiteResult):
    """(case, impl, dtype, shape, cost, build() -> (module, call)) of every stage to measure; each
    build makes its own model, so only one stage's weights are resident at a time."""
    cfg = ctx.dit_config
    inputs = dit_inputs(ctx, cfg, ctx.batch)
    lf, lh, lw = ctx.latent_grid
    dit_shape = f"{ctx.size_label} B{ctx.batch} {cfg.num_layers}L"
    weights = random_dit_weights(cfg, ctx.seed)

    def reference():
        dit = reference_dit(cfg, weights, ctx.dtype, ctx.device)
        return dit, lambda: dit(**inputs)

    dit_cost = dit_forward_cost(cfg, ctx.width, ctx.height, ctx.frames, ctx.batch, dtype_bytes=ctx.dtype_bytes)
    stages = [("dit forward", "reference", ctx.dtype, dit_shape, dit_cost, reference)]
    build_executor, why = executor_factory()
    if build_executor is None:
        result.notes.append(f"memory executor: {why}")
    else:
        def executor():
            model = build_executor(reference_dit(cfg, weights, ctx.dtype, ctx.device), dtype=ctx.dtype)
            text = model.prepare_text(inputs["context"], inputs.get("clip_fea"))
            return model, lambda: model.predict(inputs["x"], inputs["t"], text, y=inputs.get("y"))

        stages.append(("dit forward", "executor", ctx.dtype, dit_shape, dit_cost, executor))

    def vae():
        model = reference_vae(ctx.model.vae, random_vae_weights(ctx.model.vae, ctx.seed + 1), torch.float32,
                              ctx.device)
        latents = torch.randn(1, ctx.model.vae.z_dim, lf, lh, lw, device=ctx.device)
        return model, lambda: model.decode(latents)

    stages.append(("vae decode", "reference", torch.float32, f"{ctx.size_label} latent {lf}x{lh}x{lw}",
                   vae_decode_cost(ctx.model.vae, ctx.width, ctx.height, ctx.frames, 1), vae))

    t5 = ctx.model.t5
    if t5.num_layers * t5.d_model * t5.d_ff > TEXT_ENCODER_DRAW_LIMIT:
        result.notes.append(f"memory: text encoder skipped (drawing {ctx.preset}'s umT5 random weights on the "
                            f"CPU takes minutes)")
        return stages

    def text_encoder():
        from wan_engine.assembly import random_text_encoder

        encoder = random_text_encoder(t5, seed=ctx.seed + 2, dtype=ctx.dtype, device=ctx.device)
        return encoder.model, lambda: encoder.encode(["a corgi surfing a wave", ""])

    stages.append(("text encoding", "reference", ctx.dtype, f"2 prompts, text_len {t5.text_len}",
                   text_encoder_cost(t5, 2, ctx.dtype_bytes), text_encoder))
    return stages


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    with torch.inference_mode():
        for case, impl, dtype, shape, cost, build in _stages(ctx, result):
            module, call = build()
            seconds, added, method = peak_memory(ctx.device, call, ctx.warmup)
            weights_mib = module_bytes(module) / MIB
            ops = getattr(module, "ops", None)  # the executor's resolved ops; the reference has none
            attention = ops.attention.label if ops is not None else (
                REFERENCE_ATTENTION if case == "dit forward" else None)
            result.rows.append(make_row(
                ctx, SUITE, case, impl, summarize([seconds], 0), shape=shape, dtype=dtype_name(dtype), cost=cost,
                peak_mem_mib=added, weights_mib=weights_mib, attention=attention,
                note=f"weights {weights_mib:.1f} MiB; peak: {method}"))
            if case == "dit forward" and ctx.model.experts is not None and impl == "executor":
                result.notes.append(f"memory: {ctx.preset} has two experts of this DiT: {2 * weights_mib:.1f} MiB of "
                                    f"DiT weights resident by default, one expert's ({weights_mib:.1f} MiB) with "
                                    f"--offload; the forward's peak is one expert's either way")
            module = call = None  # free this stage's model before the next is built
            release_memory(ctx.device)
    return result
