"""What every suite shares: the run's context, result rows, model and input builders.

A row is a flat dict (JSON/CSV-ready) describing one timed implementation:
  suite, case, impl, shape, dtype, device    what ran
  median_ms, p20_ms, p80_ms, repeats, ...    timing (bench.timing)
  flops, bytes, tflops, gbps                 work done and effective rates (bench.roofline)
  floor_ms, pct_of_floor, bound              against the measured ceilings
  max_abs, rel_l2, cosine, psnr, ssim        accuracy against `oracle` (bench.accuracy)
  peak_mem_mib                               memory a run added at its peak (the memory suite)
  attention                                  the concrete attention backend the row ran on
  acc_metric, acc_limit, acc_rule, verdict   its accuracy bound (bench.bounds) and pass/FAIL; a
                                             crashed implementation is a row with verdict FAIL
  note                                       anything a reader must know
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from wan_engine.configs import DiTConfig, ModelConfig
from wan_engine.device import exact_fp32 as device_exact_fp32

from ..bounds import FAIL, Bound
from ..ceilings import MeasuredCeilings
from ..roofline import ComponentCost, Cost, latent_shape, roofline_point
from ..timing import TimingStats

TEXT_TOKENS = 48  # prompt length fed to the DiT before its zero padding to text_len

ROW_FIELDS = (
    "suite", "case", "impl", "shape", "dtype", "device",
    "median_ms", "p20_ms", "p80_ms", "repeats", "warmup", "timer",
    "flops", "bytes", "tflops", "gbps", "floor_ms", "pct_of_floor", "bound",
    "oracle", "max_abs", "rel_l2", "cosine", "psnr", "ssim", "peak_mem_mib", "attention",
    "acc_metric", "acc_limit", "acc_rule", "verdict", "note",
)
# What the eager reference DiT attends with: F.scaled_dot_product_attention, torch's kernel choice.
REFERENCE_ATTENTION = "reference (torch sdpa)"


@dataclass(frozen=True)
class BenchContext:
    """One benchmark run's settings, shared read-only by the suites."""

    preset: str
    model: ModelConfig
    width: int
    height: int
    frames: int
    device: torch.device
    dtype: torch.dtype              # the engine dtype (GEMMs, attention)
    repeats: int
    warmup: int
    batch: int = 2                  # the two CFG branches as one batch, as the executor runs them
    layers: int | None = None       # DiT depth override (None: the preset's)
    steps: int | None = None        # e2e denoising steps (None: the preset's)
    compile: bool = True            # include torch.compile variants
    ceilings: MeasuredCeilings | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("repeats", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if self.layers is not None and (not isinstance(self.layers, int) or self.layers < 1):
            raise ValueError(f"layers must be None or an int >= 1, got {self.layers!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be None or an int >= 1, got {self.steps!r}")
        latent_shape(self.width, self.height, self.frames)  # ValueError on an impossible video size

    def replace(self, **changes) -> "BenchContext":
        return dataclasses.replace(self, **changes)

    @property
    def dit_config(self) -> DiTConfig:
        cfg = self.model.dit
        return cfg if self.layers is None else dataclasses.replace(cfg, num_layers=self.layers)

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width) of the video size."""
        return latent_shape(self.width, self.height, self.frames,
                            (self.model.vae.temporal_stride, self.model.vae.spatial_stride,
                             self.model.vae.spatial_stride))

    @property
    def size_label(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @property
    def dtype_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


@dataclass
class SuiteResult:
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""  # preformatted output (the roofline breakdown tables)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
            torch.float64: "fp64"}.get(dtype, str(dtype).removeprefix("torch."))


def single_cost(name: str, flops: float, nbytes: float) -> Cost:
    return Cost(name, (ComponentCost(name, float(flops), float(nbytes)),))


def text_encoder_cost(t5, prompts: int, dtype_bytes: int) -> Cost:
    """Approximate FLOPs and bytes of encoding `prompts` prompts padded to text_len with umT5.

    Per layer and token: q, k, v, o projections (d_model x heads*d_kv each) and the gated FFN
    (three d_model x d_ff matrices), plus the two attention GEMMs over text_len keys; weights read
    once per call, each layer's activations read and written once. Embedding lookups, norms and
    the relative position bias are left out (< 1% of the FLOPs).
    """
    length, d, inner = t5.text_len, t5.d_model, t5.num_heads * t5.d_kv
    layer_weights = 4 * d * inner + 3 * d * t5.d_ff
    flops = prompts * t5.num_layers * (2 * length * layer_weights + 4 * length * length * inner)
    activations = prompts * length * (2 * d + 4 * inner + 3 * t5.d_ff)
    nbytes = dtype_bytes * t5.num_layers * (layer_weights + activations)
    return single_cost("text encoding", flops, nbytes)


def make_row(ctx: BenchContext, suite: str, case: str, impl: str, stats: TimingStats | None, *,
             shape: str, dtype: str, cost: Cost | None = None, accuracy: dict | None = None,
             oracle: str = "", note: str = "", bound: Bound | None = None, attention: str | None = None,
             **extra) -> dict:
    """One result row; rates and % of floor are filled when `cost` (and measured ceilings) exist,
    the verdict when `bound` is given (judged on the row's accuracy)."""
    row = dict.fromkeys(ROW_FIELDS)
    row.update(suite=suite, case=case, impl=impl, shape=shape, dtype=dtype, device=ctx.device.type,
               oracle=oracle or None, note=note or None)
    if stats is not None:
        row.update(stats.to_dict())
    if cost is not None:
        row.update(flops=cost.flops, bytes=cost.bytes)
        if stats is not None and stats.median_s > 0:
            row.update(tflops=cost.flops / stats.median_s / 1e12 if cost.flops else None,
                       gbps=cost.bytes / stats.median_s / 1e9 if cost.bytes else None)
            if ctx.ceilings is not None:
                point = roofline_point(stats.median_s, cost, ctx.ceilings.roofline())
                row.update(floor_ms=1e3 * point.floor_seconds, pct_of_floor=point.pct_of_floor, bound=point.bound)
    if accuracy:
        row.update(accuracy)
    row.update(extra)
    if attention is not None:
        row["attention"] = attention
    if bound is not None:
        row.update(bound.fields(row))
    return row


def crash_row(ctx: BenchContext, suite: str, case: str, impl: str, err: BaseException, *, shape: str = "",
              dtype: str = "", attention: str | None = None) -> dict:
    """The row of an implementation that raised while being built, run or timed: verdict FAIL, the
    exception in the note (a crash is a result, never a silent note)."""
    message = " ".join(str(err).split())[:240]
    return make_row(ctx, suite, case, impl, None, shape=shape, dtype=dtype, attention=attention,
                    note=f"crashed: {type(err).__name__}: {message}") | dict(verdict=FAIL)


def failed_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("verdict") == FAIL]


def generator(ctx: BenchContext, offset: int = 0) -> torch.Generator:
    return torch.Generator(device=ctx.device).manual_seed(ctx.seed + offset)


def dit_inputs(ctx: BenchContext, cfg: DiTConfig, batch: int) -> dict[str, torch.Tensor]:
    """Random (not zero) DiT inputs: x [B, C, f, h, w] fp32, t [B] int64, context [B, 48, text_dim];
    for i2v/flf2v also y [B, in_dim - C, f, h, w] (C = out_dim, the noise) and clip_fea
    [B, T, image_dim]. Keyword arguments of the reference's forward."""
    gen = generator(ctx, 100)
    lf, lh, lw = ctx.latent_grid
    noise_channels = cfg.in_dim if cfg.model_type == "t2v" else cfg.out_dim
    x = torch.randn(batch, noise_channels, lf, lh, lw, generator=gen, device=ctx.device)
    t = torch.randint(0, 1000, (batch,), generator=gen, device=ctx.device)
    context = torch.randn(batch, min(TEXT_TOKENS, cfg.text_len), cfg.text_dim, generator=gen, device=ctx.device)
    if cfg.model_type == "t2v":
        return dict(x=x, t=t, context=context)
    y = torch.randn(batch, cfg.in_dim - noise_channels, lf, lh, lw, generator=gen, device=ctx.device)
    if not cfg.uses_clip:  # Wan2.2 I2V-A14B: conditioned by y alone
        return dict(x=x, t=t, context=context, y=y)
    rows = (2 if cfg.model_type == "flf2v" else 1) * cfg.image_tokens
    clip_fea = torch.randn(batch, rows, cfg.image_dim, generator=gen, device=ctx.device)
    return dict(x=x, t=t, context=context, clip_fea=clip_fea, y=y)


def reference_dit(cfg: DiTConfig, state_dict: dict, dtype: torch.dtype, device: torch.device):
    """The eager reference DiT with `compute_dtype=dtype`, parameters stored in `dtype`."""
    from wan_engine.loading.checkpoint import load_into
    from wan_engine.reference.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(cfg, compute_dtype=dtype)
    model = load_into(model, state_dict, dtype=dtype, device=device, source="random weights")
    return model.eval().requires_grad_(False)


def random_dit_weights(cfg: DiTConfig, seed: int) -> dict:
    """Seeded fp32 CPU weights for `cfg` (the same for every implementation compared)."""
    from wan_engine.loading.random_init import random_state_dict
    from wan_engine.reference.dit import WanDiT

    with torch.device("meta"):
        shape_model = WanDiT(cfg)
    return random_state_dict(shape_model, seed)


def executor_factory() -> tuple[Callable | None, str]:
    """(build(dit, **engine_options) -> executor, "") or (None, why it is unavailable)."""
    try:
        from wan_engine.engine_config import EngineConfig
        from wan_engine.executor import build_executor
    except ImportError as err:
        return None, f"executor unavailable ({err})"

    def build(dit, **options):
        return build_executor(dit, EngineConfig(**options))

    return build, ""


def exact_fp32(device: torch.device):
    """TF32 off while an fp32 oracle runs, restored afterwards (wan_engine.device.exact_fp32):
    cuDNN convolutions default to TF32, which would make an "fp32" oracle only ~1e-3 accurate
    and hide the error of the implementations measured against it. `device` is unused (the
    flags do nothing off CUDA)."""
    return device_exact_fp32()


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
