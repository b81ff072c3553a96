"""`--suite dit`: one DiT forward, reference vs executor vs torch.compile (vs diffusers).

All implementations get the same seeded random weights and the same random inputs (batch 2 by
default: the CFG pair the executor runs as one batch). The oracle is the eager reference in fp32
(`compute_dtype=torch.float32`), run first and freed before the others are built, so its
weights and the others' are never resident together. Implementations:

  reference          the eager reference in the engine dtype (the official amp run in bf16)
  reference-bf16     when the engine dtype is fp32: the official bf16 run, measured beside it
  executor           wan_engine.executor.build_executor, same dtype; timed as `predict` with the
                     text K/V prepared once beforehand (they are per request, not per step)
  executor+compile   the executor with EngineConfig(compile=True)      (with --compile)
  torch.compile      torch.compile of the reference                    (with --compile)
  diffusers          diffusers' WanTransformer3DModel on the converted weights, when installed

The first call of a compiled variant compiles; it is part of the warm-up (at least one) and its
duration is reported in the row's note.

Verdicts (bench/bounds.py): the same-dtype reference is held to `reference_bound` (a few
roundings of its dtype per layer); the executor and the compiled variants to twice that
reference's measured error plus one rounding and the fp32 accumulation term (in fp32 the
reference is the oracle, so only the last two remain); diffusers is a peer with other numerics
(measured, not judged). An implementation that raises while built or timed is a FAIL row.
`run(ctx, extra=[Candidate(...)])` adds implementations after the built-in ones.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..accuracy import compare_tensors
from ..bounds import optimized_bound, reference_bound
from ..roofline import dit_forward_cost
from ..timing import measure
from .common import (
    REFERENCE_ATTENTION, BenchContext, SuiteResult, crash_row, dit_inputs, dtype_name, exact_fp32,
    executor_factory, make_row, random_dit_weights, reference_dit, release_memory,
)

SUITE = "dit"
CASE = "dit forward"


def diffusers_transformer(cfg, state_dict: dict, dtype: torch.dtype, device: torch.device):
    """diffusers' WanTransformer3DModel with the reference's weights (official -> diffusers names)."""
    import diffusers

    from wan_engine.loading.dit_format import official_to_diffusers_dit

    image = cfg.uses_clip
    model = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps,
        image_dim=cfg.image_dim if image else None, added_kv_proj_dim=cfg.dim if image else None,
        pos_embed_seq_len=2 * cfg.image_tokens if cfg.model_type == "flf2v" else None,
    )
    model.load_state_dict(official_to_diffusers_dit(state_dict), strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def diffusers_call(model, cfg, inputs: dict, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """diffusers takes the context already zero-padded to text_len (its pipeline does that)."""
    x = inputs["x"] if "y" not in inputs else torch.cat([inputs["x"], inputs["y"]], dim=1)
    x = x.to(dtype)
    context = F.pad(inputs["context"], (0, 0, 0, cfg.text_len - inputs["context"].shape[1])).to(dtype)
    t = inputs["t"]
    image = inputs.get("clip_fea")
    if image is not None:  # diffusers takes flf2v's features as the official [2B, T, D] pairs
        image = image.reshape(-1, cfg.image_tokens, cfg.image_dim).to(dtype)
    return lambda: model(x, t, context, encoder_hidden_states_image=image, return_dict=False)[0].float()


@dataclass(frozen=True)
class DitSetup:
    """What a candidate builds from: the run's context, config, seeded weights and inputs."""

    ctx: BenchContext
    cfg: object
    weights: dict
    inputs: dict

    def reference(self, dtype: torch.dtype):
        """A fresh eager reference in `dtype` (each candidate builds its own, freed after it)."""
        return reference_dit(self.cfg, self.weights, dtype, self.ctx.device)


@dataclass(frozen=True)
class Prepared:
    """A built implementation: the timed call and the attention it runs on."""

    call: Callable[[], torch.Tensor]
    attention: str
    detail: str = ""  # how the attention backend was chosen, reported once per suite


@dataclass(frozen=True)
class Candidate:
    """One DiT-forward implementation the suite builds, times and judges.

    judge: "baseline" (the eager reference in `dtype`: held to bounds.reference_bound, and the
    yardstick of the others), "optimized" (held to twice the same-dtype baseline's error,
    bounds.optimized_bound) or "peer" (another library's numerics: measured, not judged).
    """

    impl: str
    dtype: torch.dtype
    build: Callable[[DitSetup], Prepared]
    judge: str = "optimized"
    compiled: bool = False
    note: str = ""

    def __post_init__(self):
        if self.judge not in ("baseline", "optimized", "peer"):
            raise ValueError(f"judge must be 'baseline', 'optimized' or 'peer', got {self.judge!r}")


def _reference_candidate(impl: str, dtype: torch.dtype) -> Candidate:
    def build(setup: DitSetup) -> Prepared:
        return Prepared(_call(setup.reference(dtype), setup.inputs), REFERENCE_ATTENTION)

    return Candidate(impl, dtype, build, judge="baseline")


def _compiled_reference(dtype: torch.dtype) -> Candidate:
    def build(setup: DitSetup) -> Prepared:
        return Prepared(_call(torch.compile(setup.reference(dtype)), setup.inputs), REFERENCE_ATTENTION)

    return Candidate("torch.compile", dtype, build, compiled=True)


def _executor_candidate(impl: str, dtype: torch.dtype, make, graphs: bool = False, quant: str | None = None,
                        **options) -> Candidate:
    def build(setup: DitSetup) -> Prepared:
        executor = make(setup.reference(dtype), dtype=dtype, **options)
        if quant is not None:
            executor.quantize_weights(quant)
        attention = executor.ops.attention
        call = _graphed_call(executor, setup.inputs) if graphs else _executor_call(executor, setup.inputs)
        return Prepared(call, attention.label, attention.describe())

    if quant is not None:  # lossy by design: its error is reported, not held to the lossless bounds
        return Candidate(impl, dtype, build, judge="peer", note="fp8 block weights (lossy): measured, not judged")
    return Candidate(impl, dtype, build, compiled=bool(options.get("compile")))


def _diffusers_candidate(dtype: torch.dtype) -> Candidate:
    def build(setup: DitSetup) -> Prepared:
        model = diffusers_transformer(setup.cfg, setup.weights, dtype, setup.ctx.device)
        return Prepared(diffusers_call(model, setup.cfg, setup.inputs, dtype), "diffusers (torch sdpa)")

    return Candidate("diffusers", dtype, build, judge="peer",
                     note="WanTransformer3DModel, all weights in the engine dtype")


def default_candidates(ctx: BenchContext, notes: list[str]) -> list[Candidate]:
    """The built-in implementations in run order (the baseline first); skipped ones get a note."""
    low = torch.bfloat16 if ctx.dtype == torch.float32 else ctx.dtype
    out = [_reference_candidate("reference-bf16" if ctx.dtype == torch.float32 else "reference", low)]
    if ctx.compile:
        out.append(_compiled_reference(ctx.dtype))
    make, why = executor_factory()
    if make is None:
        notes.append(f"dit executor: skipped ({why})")
    else:
        out.append(_executor_candidate("executor", ctx.dtype, make))
        if ctx.device.type == "cuda":
            out.append(_executor_candidate("executor+graphs", ctx.dtype, make, graphs=True))
        else:
            notes.append("dit executor+graphs: skipped (CUDA graphs need a GPU)")
        if ctx.device.type == "cuda" and ctx.dtype == torch.bfloat16 and torch.cuda.get_device_capability(ctx.device) >= (8, 9):
            # fp8 block weights (lossy: judged like the other executor rows, its error reported).
            out.append(_executor_candidate("executor+fp8", ctx.dtype, make, quant="fp8"))
        else:
            notes.append("dit executor+fp8: skipped (needs a bf16 run on an sm_89+ GPU)")
        if ctx.compile:
            out.append(_executor_candidate("executor+compile", ctx.dtype, make, compile=True))
    if importlib.util.find_spec("diffusers") is None:
        notes.append("dit diffusers: skipped (diffusers is not installed)")
    else:
        out.append(_diffusers_candidate(ctx.dtype))
    return out


class _Runner:
    """Builds, times and judges candidates against one oracle output; collects rows and notes."""

    def __init__(self, setup: DitSetup, result: SuiteResult, oracle_out: torch.Tensor, shape: str):
        self.setup, self.result, self.oracle_out, self.shape = setup, result, oracle_out, shape
        self.layers = setup.cfg.num_layers
        # dtype -> (rel L2 of the same-dtype reference, its label): fp32's is the oracle itself.
        self.baselines = {torch.float32: (0.0, "the fp32 reference (the oracle)")}
        self.attention_details: dict[str, str] = {}

    def _bound(self, candidate: Candidate):
        if candidate.judge == "peer":
            return None
        if candidate.judge == "baseline":
            return reference_bound(candidate.dtype, self.layers)
        if candidate.dtype not in self.baselines:  # the baseline crashed: its own bound stands in
            limit = reference_bound(candidate.dtype, self.layers).limit
            return optimized_bound(candidate.dtype, self.layers, limit, "the baseline's bound (no baseline row)")
        err, label = self.baselines[candidate.dtype]
        return optimized_bound(candidate.dtype, self.layers, err, label)

    def time(self, candidate: Candidate, prepared: Prepared) -> dict:
        ctx = self.setup.ctx
        warmup, note = ctx.warmup, candidate.note
        if candidate.compiled:
            start = time.perf_counter()
            prepared.call()  # compiles
            note = f"{note} first call (compile) {time.perf_counter() - start:.1f} s".strip()
            warmup = max(0, warmup - 1)
        stats, out = measure(prepared.call, ctx.device, ctx.repeats, warmup)
        cost = dit_forward_cost(ctx.dit_config, ctx.width, ctx.height, ctx.frames, out.shape[0],
                                dtype_bytes=torch.empty((), dtype=candidate.dtype).element_size())
        row = make_row(ctx, SUITE, CASE, candidate.impl, stats, shape=self.shape, dtype=dtype_name(candidate.dtype),
                       cost=cost, accuracy=compare_tensors(out, self.oracle_out), oracle="reference fp32",
                       note=note, attention=prepared.attention)
        bound = self._bound(candidate)
        if bound is not None:
            row.update(bound.fields(row))
        if candidate.judge == "baseline" and candidate.dtype not in self.baselines:
            self.baselines[candidate.dtype] = (row["rel_l2"], f"reference {dtype_name(candidate.dtype)}")
        return row

    def attempt(self, candidate: Candidate) -> None:
        """Build, time and judge one candidate; an exception is a crashed (FAIL) row."""
        try:
            prepared = candidate.build(self.setup)
            if prepared.detail:
                self.attention_details.setdefault(prepared.attention, prepared.detail)
            row = self.time(candidate, prepared)
        except Exception as err:  # noqa: BLE001 - a crash is a result: the row fails
            row = crash_row(self.setup.ctx, SUITE, CASE, candidate.impl, err, shape=self.shape,
                            dtype=dtype_name(candidate.dtype))
        self.result.rows.append(row)
        release_memory(self.setup.ctx.device)


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
    text = executor.prepare_text(inputs["context"], inputs.get("clip_fea"))
    return lambda: executor.predict(inputs["x"], inputs["t"], text, y=inputs.get("y"))


def _graphed_call(executor, inputs: dict) -> Callable[[], torch.Tensor]:
    """The per-step call replayed as a CUDA graph (the runner's path: StepFunctions.full); the
    warm-up calls capture it, so the timed calls are replays (if a capture fails the timed calls
    run eagerly and the failure is logged)."""
    from wan_engine.executor.steps import StepFunctions, text_tensors
    from wan_engine.graphs import GraphReplayer

    text = executor.prepare_text(inputs["context"], inputs.get("clip_fea"))
    replayer = GraphReplayer(inputs["x"].device)
    x, t, y = inputs["x"], inputs["t"], inputs.get("y")

    def call():
        patches, rope = executor.tokens_in(x, t, y=y)
        fns = StepFunctions(executor, rope, text)
        out = replayer.call(fns.key("full", patches, text), fns.full, patches, t, rope.cos, rope.sin,
                            *text_tensors(text))
        return executor.tokens_out(out, rope)
    return call


def run(ctx: BenchContext, extra: Sequence[Candidate] = ()) -> SuiteResult:
    """The oracle, then the built-in candidates, then `extra` ones (e.g. a new implementation
    under evaluation, or the test doubles of the GPU check's own tests)."""
    result = SuiteResult()
    cfg = ctx.dit_config
    weights = random_dit_weights(cfg, ctx.seed)
    inputs = dit_inputs(ctx, cfg, ctx.batch)
    lf, lh, lw = ctx.latent_grid
    shape = f"{ctx.size_label} B{ctx.batch} {cfg.num_layers}L latent {lf}x{lh}x{lw}"
    oracle_is_engine = ctx.dtype == torch.float32
    candidates = [*default_candidates(ctx, result.notes), *extra]

    with torch.inference_mode():
        stats, oracle_out = _oracle(ctx, cfg, weights, inputs)
        release_memory(ctx.device)
        result.rows.append(make_row(
            ctx, SUITE, CASE, "reference", stats, shape=shape, dtype="fp32",
            cost=dit_forward_cost(cfg, ctx.width, ctx.height, ctx.frames, ctx.batch, dtype_bytes=4),
            oracle="(is the oracle)", attention=REFERENCE_ATTENTION,
            note="" if oracle_is_engine else "oracle: one run, no warm-up"))
        runner = _Runner(DitSetup(ctx, cfg, weights, inputs), result, oracle_out, shape)
        for candidate in candidates:
            runner.attempt(candidate)
    result.notes += [f"dit attention {label}: {detail}" for label, detail in runner.attention_details.items()]
    return result
