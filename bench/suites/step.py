"""`--suite step`: one classifier-free-guidance denoising step.

A step is the guided velocity `u + g * (c - u)` (two DiT evaluations) and one flow-UniPC update,
on batch-1 latents with random cond/uncond text embeddings and the preset's guidance and shift.
Per-request work (the executor's text K/V) is prepared before timing, as the runner does once
per generate call. Accuracy compares the guided velocity with the fp32 reference's: comparing
the updated latents would mostly compare the unchanged input latents.

Implementations: reference (engine dtype; `reference-bf16` beside an fp32 oracle), and, when the
executor exists, executor with cond+uncond as one batch-2 forward and as two forwards.

Verdicts: the executor rows by `bench.bounds.optimized_bound` against the same-dtype reference's
measured error (which the guidance amplifies alike), its rounding terms scaled by
`guidance_amplification`; the reference's own bound is the dit suite's business. A crash is a
FAIL row.
"""
from __future__ import annotations

from typing import Callable

import torch

from wan_engine.reference.schedulers import make_solver

from ..accuracy import compare_tensors
from ..bounds import guidance_amplification, optimized_bound
from ..roofline import dit_forward_cost
from ..timing import measure
from .common import (
    REFERENCE_ATTENTION, BenchContext, SuiteResult, crash_row, dit_inputs, dtype_name, exact_fp32,
    executor_factory, make_row, random_dit_weights, reference_dit, release_memory,
)

SUITE = "step"
CASE = "cfg step"


def guided_velocity_fn(dit, context, context_null, guidance: float, cfg_batch: bool | None = None, image=None):
    """The runner's guided-velocity function for `dit` (reference or executor); `image` the
    i2v/flf2v conditioning (`runner.ImageInputs`) or None.

    Falls back to the official two-call form for the reference when the runner predates
    `make_guided_velocity`.
    """
    try:
        from wan_engine.runner import make_guided_velocity
    except ImportError:
        if cfg_batch is not None or image is not None:
            raise

        def velocity(x, t):
            v_cond, v_uncond = dit(x, t, context).float(), dit(x, t, context_null).float()
            return v_uncond + guidance * (v_cond - v_uncond)

        return velocity
    if image is None:
        return make_guided_velocity(dit, context, context_null, guidance, cfg_batch=cfg_batch)
    return make_guided_velocity(dit, context, context_null, guidance, cfg_batch=cfg_batch, image=image)


def step_fn(ctx: BenchContext, velocity: Callable, latents: torch.Tensor
            ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """() -> (next latents, guided velocity) for step 0 of a fresh solver (solvers are one-shot)."""
    sample = ctx.model.sample
    steps = ctx.steps or sample.steps

    def step():
        solver = make_solver(sample.solver, steps, sample.shift)
        timestep = solver.timesteps[:1].to(latents.device)
        v = velocity(latents, timestep)
        return solver.step(v, 0, latents), v

    return step


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    cfg = ctx.dit_config
    weights = random_dit_weights(cfg, ctx.seed)
    inputs = dit_inputs(ctx, cfg, 2)
    latents = inputs["x"][:1]
    context, context_null = inputs["context"][:1], inputs["context"][1:]
    image = None
    if "y" in inputs:  # i2v/flf2v: one request's conditioning, shared by both branches
        from wan_engine.runner import ImageInputs

        clip = inputs.get("clip_fea")
        image = ImageInputs(None if clip is None else clip[:1], inputs["y"][:1])
    guidance = ctx.model.sample.guidance
    lf, lh, lw = ctx.latent_grid
    shape = f"{ctx.size_label} {cfg.num_layers}L latent {lf}x{lh}x{lw} g={guidance}"

    def cost(dtype):  # two evaluations of a batch-1 forward ~ one batch-2 forward
        return dit_forward_cost(cfg, ctx.width, ctx.height, ctx.frames, 2,
                                dtype_bytes=torch.empty((), dtype=dtype).element_size())

    with torch.inference_mode():
        oracle = reference_dit(cfg, weights, torch.float32, ctx.device)
        oracle_is_engine = ctx.dtype == torch.float32
        repeats, warmup = (ctx.repeats, ctx.warmup) if oracle_is_engine else (1, 0)
        with exact_fp32(ctx.device):
            stats, (_, oracle_v) = measure(step_fn(ctx, guided_velocity_fn(oracle, context, context_null, guidance, image=image),
                                                   latents), ctx.device, repeats, warmup)
        result.rows.append(make_row(ctx, SUITE, CASE, "reference", stats, shape=shape, dtype="fp32",
                                    cost=cost(torch.float32), oracle="(is the oracle)", attention=REFERENCE_ATTENTION,
                                    note="" if oracle_is_engine else "oracle: one run, no warm-up"))
        del oracle
        release_memory(ctx.device)

        # The same-dtype reference's error: fp32's is the oracle itself.
        baseline = {torch.float32: (0.0, "the fp32 reference (the oracle)")}

        def timed(impl: str, dit, dtype, attention: str, cfg_batch=None, note=""):
            try:
                fn = step_fn(ctx, guided_velocity_fn(dit, context, context_null, guidance, cfg_batch, image), latents)
                stats, (_, v) = measure(fn, ctx.device, ctx.repeats, ctx.warmup)
            except Exception as err:  # noqa: BLE001 - a crash is a failed row
                result.rows.append(crash_row(ctx, SUITE, CASE, impl, err, shape=shape, dtype=dtype_name(dtype),
                                             attention=attention))
                return
            accuracy = compare_tensors(v, oracle_v)
            bound = None
            if impl.startswith("executor") and dtype in baseline:
                bound = optimized_bound(dtype, cfg.num_layers, *baseline[dtype],
                                        amplification=guidance_amplification(guidance))
            elif impl.startswith("reference"):
                baseline.setdefault(dtype, (accuracy["rel_l2"], f"reference {dtype_name(dtype)}"))
            result.rows.append(make_row(ctx, SUITE, CASE, impl, stats, shape=shape, dtype=dtype_name(dtype),
                                        cost=cost(dtype), accuracy=accuracy, bound=bound, attention=attention,
                                        oracle="reference fp32 guided velocity", note=note))

        low = torch.bfloat16 if oracle_is_engine else ctx.dtype
        reference = reference_dit(cfg, weights, low, ctx.device)
        timed("reference-bf16" if oracle_is_engine else "reference", reference, low, REFERENCE_ATTENTION)
        del reference

        build, why = executor_factory()
        if build is None:
            result.notes.append(f"step executor: skipped ({why})")
            return result
        try:
            executor = build(reference_dit(cfg, weights, ctx.dtype, ctx.device), dtype=ctx.dtype)
        except Exception as err:  # noqa: BLE001 - a crash is a failed row
            result.rows += [crash_row(ctx, SUITE, CASE, impl, err, shape=shape, dtype=dtype_name(ctx.dtype))
                            for impl in ("executor", "executor-2x")]
            return result
        attention = executor.ops.attention.label
        timed("executor", executor, ctx.dtype, attention, cfg_batch=True, note="cond+uncond as one batch-2 forward")
        timed("executor-2x", executor, ctx.dtype, attention, cfg_batch=False, note="cond and uncond as two forwards")
        del executor
        release_memory(ctx.device)
    return result
