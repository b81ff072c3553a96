"""`--suite step`: one classifier-free-guidance denoising step.

A step is the guided velocity `u + g * (c - u)` (two DiT evaluations) and one flow-UniPC update,
on batch-1 latents with random cond/uncond text embeddings and the preset's guidance and shift.
Per-request work (the executor's text K/V) is prepared before timing, as the runner does once
per generate call. Accuracy compares the guided velocity with the fp32 reference's: comparing
the updated latents would mostly compare the unchanged input latents.

Implementations: reference (engine dtype; `reference-bf16` beside an fp32 oracle), and, when the
executor exists, executor with cond+uncond as one batch-2 forward and as two forwards.
"""
from __future__ import annotations

from typing import Callable

import torch

from wan_engine.reference.schedulers import make_solver

from ..accuracy import compare_tensors
from ..roofline import dit_forward_cost
from ..timing import measure
from .common import (
    BenchContext, SuiteResult, dit_inputs, dtype_name, exact_fp32, executor_factory, make_row,
    random_dit_weights, reference_dit, release_memory,
)

SUITE = "step"
CASE = "cfg step"


def guided_velocity_fn(dit, context, context_null, guidance: float, cfg_batch: bool | None = None):
    """The runner's guided-velocity function for `dit` (reference or executor).

    Falls back to the official two-call form for the reference when the runner predates
    `make_guided_velocity`.
    """
    try:
        from wan_engine.runner import make_guided_velocity
    except ImportError:
        if cfg_batch is not None:
            raise

        def velocity(x, t):
            v_cond, v_uncond = dit(x, t, context).float(), dit(x, t, context_null).float()
            return v_uncond + guidance * (v_cond - v_uncond)

        return velocity
    return make_guided_velocity(dit, context, context_null, guidance, cfg_batch=cfg_batch)


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
            stats, (_, oracle_v) = measure(step_fn(ctx, guided_velocity_fn(oracle, context, context_null, guidance),
                                                   latents), ctx.device, repeats, warmup)
        result.rows.append(make_row(ctx, SUITE, CASE, "reference", stats, shape=shape, dtype="fp32",
                                    cost=cost(torch.float32), oracle="(is the oracle)",
                                    note="" if oracle_is_engine else "oracle: one run, no warm-up"))
        del oracle
        release_memory(ctx.device)

        def timed(impl: str, dit, dtype, cfg_batch=None, note=""):
            try:
                fn = step_fn(ctx, guided_velocity_fn(dit, context, context_null, guidance, cfg_batch), latents)
                stats, (_, v) = measure(fn, ctx.device, ctx.repeats, ctx.warmup)
            except Exception as err:  # noqa: BLE001 - reported in the results
                result.notes.append(f"step {impl}: failed ({type(err).__name__}: {str(err)[:200]})")
                return
            result.rows.append(make_row(ctx, SUITE, CASE, impl, stats, shape=shape, dtype=dtype_name(dtype),
                                        cost=cost(dtype), accuracy=compare_tensors(v, oracle_v),
                                        oracle="reference fp32 guided velocity", note=note))

        low = torch.bfloat16 if oracle_is_engine else ctx.dtype
        reference = reference_dit(cfg, weights, low, ctx.device)
        timed("reference-bf16" if oracle_is_engine else "reference", reference, low)
        del reference

        build, why = executor_factory()
        if build is None:
            result.notes.append(f"step executor: {why}")
            return result
        engine_reference = reference_dit(cfg, weights, ctx.dtype, ctx.device)
        executor = build(engine_reference, dtype=ctx.dtype)
        del engine_reference
        timed("executor", executor, ctx.dtype, cfg_batch=True, note="cond+uncond as one batch-2 forward")
        timed("executor-2x", executor, ctx.dtype, cfg_batch=False, note="cond and uncond as two forwards")
        del executor
        release_memory(ctx.device)
    return result
