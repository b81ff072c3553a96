"""`--suite dit`: one DiT forward, reference vs executor vs torch.compile (vs diffusers).

All implementations get the same seeded random weights and the same random inputs (batch 2 by
default: the CFG pair the executor runs as one batch). The oracle is the eager reference in fp32
(`compute_dtype=torch.float32`), run first and freed before the others are built, so its
weights and the others' are never resident together. Implementations:

  reference          the eager reference in the engine dtype (the official amp run in bf16)
  reference-bf16     when the engine dtype is fp32: the low-precision baseline an optimized
                     bf16 path is judged against
  executor           wan_engine.executor.build_executor, same dtype; timed as `predict` with the
                     text K/V prepared once beforehand (they are per request, not per step)
  executor+compile   the executor with EngineConfig(compile=True)      (with --compile)
  torch.compile      torch.compile of the reference                    (with --compile)
  diffusers          diffusers' WanTransformer3DModel on the converted weights, when installed

The first call of a compiled variant compiles; it is part of the warm-up (at least one) and its
duration is reported in the row's note.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..accuracy import compare_tensors
from ..roofline import dit_forward_cost
from ..timing import measure
from .common import (
    BenchContext, SuiteResult, dit_inputs, dtype_name, exact_fp32, executor_factory, make_row,
    random_dit_weights, reference_dit, release_memory,
)

SUITE = "dit"
CASE = "dit forward"


def diffusers_transformer(cfg, state_dict: dict, dtype: torch.dtype, device: torch.device):
    """diffusers' WanTransformer3DModel with the reference's weights (official -> diffusers names)."""
    import diffusers

    from wan_engine.loading.dit_format import official_to_diffusers_dit

    image = cfg.model_type != "t2v"
    model = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps,
        image_dim=1280 if image else None, added_kv_proj_dim=cfg.dim if image else None,
        pos_embed_seq_len=514 if cfg.model_type == "flf2v" else None,
    )
    model.load_state_dict(official_to_diffusers_dit(state_dict), strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def diffusers_call(model, cfg, inputs: dict, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """diffusers takes the context already zero-padded to text_len (its pipeline does that)."""
    x = inputs["x"].to(dtype)
    context = F.pad(inputs["context"], (0, 0, 0, cfg.text_len - inputs["context"].shape[1])).to(dtype)
    t = inputs["t"]
    return lambda: model(x, t, context, return_dict=False)[0].float()


class _Runner:
    """Times variants against one oracle output and collects rows and notes."""

    def __init__(self, ctx: BenchContext, result: SuiteResult, oracle_out: torch.Tensor, shape: str):
        self.ctx, self.result, self.oracle_out, self.shape = ctx, result, oracle_out, shape

    def time(self, impl: str, fn: Callable[[], torch.Tensor], dtype: torch.dtype, *, compiled: bool = False,
             note: str = "") -> None:
        ctx = self.ctx
        warmup = ctx.warmup
        if compiled:
            start = time.perf_counter()
            fn()  # compiles
            note = f"{note} first call (compile) {time.perf_counter() - start:.1f} s".strip()
            warmup = max(0, warmup - 1)
        stats, out = measure(fn, ctx.device, ctx.repeats, warmup)
        cost = dit_forward_cost(ctx.dit_config, ctx.width, ctx.height, ctx.frames, out.shape[0],
                                dtype_bytes=torch.empty((), dtype=dtype).element_size())
        self.result.rows.append(make_row(
            ctx, SUITE, CASE, impl, stats, shape=self.shape, dtype=dtype_name(dtype), cost=cost,
            accuracy=compare_tensors(out, self.oracle_out), oracle="reference fp32", note=note))

    def attempt(self, impl: str, build: Callable[[], Callable[[], torch.Tensor]], dtype: torch.dtype,
                **kwargs) -> None:
        """Build and time one variant; a failure becomes a note, not a crashed suite."""
        try:
            self.time(impl, build(), dtype, **kwargs)
        except Exception as err:  # noqa: BLE001 - reported in the results
            self.result.notes.append(f"dit {impl}: failed ({type(err).__name__}: {str(err)[:200]})")
        release_memory(self.ctx.device)


def _oracle(ctx: BenchContext, cfg, weights: dict, inputs: dict):
    """(stats, output) of the fp32 reference: timed like the others when fp32 is the engine
    dtype, else run once. Its weights are freed on return."""
    oracle = reference_dit(cfg, weights, torch.float32, ctx.device)
    repeats, warmup = (ctx.repeats, ctx.warmup) if ctx.dtype == torch.float32 else (1, 0)
    with exact_fp32(ctx.device):
        return measure(lambda: oracle(**inputs), ctx.device, repeats, warmup)


def _call(model, inputs: dict) -> Callable[[], torch.Tensor]:
    return lambda: model(**inputs)


def _executor_call(executor, inputs: dict) -> Callable[[], torch.Tensor]:
    """The per-step call: text K/V are prepared once per request, so outside the timed region."""
    text = executor.prepare_text(inputs["context"])
    return lambda: executor.predict(inputs["x"], inputs["t"], text)


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    cfg = ctx.dit_config
    weights = random_dit_weights(cfg, ctx.seed)
    inputs = dit_inputs(ctx, cfg, ctx.batch)
    lf, lh, lw = ctx.latent_grid
    shape = f"{ctx.size_label} B{ctx.batch} {cfg.num_layers}L latent {lf}x{lh}x{lw}"
    oracle_is_engine = ctx.dtype == torch.float32

    def reference(dtype):  # each variant builds its own model, freed when its attempt ends
        return reference_dit(cfg, weights, dtype, ctx.device)

    with torch.inference_mode():
        stats, oracle_out = _oracle(ctx, cfg, weights, inputs)
        release_memory(ctx.device)
        result.rows.append(make_row(
            ctx, SUITE, CASE, "reference", stats, shape=shape, dtype="fp32",
            cost=dit_forward_cost(cfg, ctx.width, ctx.height, ctx.frames, ctx.batch, dtype_bytes=4),
            oracle="(is the oracle)", note="" if oracle_is_engine else "oracle: one run, no warm-up"))

        runner = _Runner(ctx, result, oracle_out, shape)
        low = torch.bfloat16 if oracle_is_engine else ctx.dtype
        runner.attempt("reference-bf16" if oracle_is_engine else "reference",
                       lambda: _call(reference(low), inputs), low)
        if ctx.compile:
            runner.attempt("torch.compile", lambda: _call(torch.compile(reference(ctx.dtype)), inputs), ctx.dtype,
                           compiled=True)

        build, why = executor_factory()
        if build is None:
            result.notes.append(f"dit executor: {why}")
        else:
            runner.attempt("executor", lambda: _executor_call(build(reference(ctx.dtype), dtype=ctx.dtype), inputs),
                           ctx.dtype)
            if ctx.compile:
                runner.attempt("executor+compile", lambda: _executor_call(
                    build(reference(ctx.dtype), dtype=ctx.dtype, compile=True), inputs), ctx.dtype, compiled=True)

        if importlib.util.find_spec("diffusers") is None:
            result.notes.append("dit diffusers: skipped (diffusers is not installed)")
        else:
            runner.attempt("diffusers", lambda: diffusers_call(
                diffusers_transformer(cfg, weights, ctx.dtype, ctx.device), cfg, inputs, ctx.dtype), ctx.dtype,
                note="WanTransformer3DModel, all weights in the engine dtype")
    return result
