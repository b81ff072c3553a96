"""Accuracy bounds derived from the dtype, and the verdict of a row against its bound.

Every judged row carries its bound (`acc_metric`, `acc_limit`) and the derivation (`acc_rule`,
with the numbers); a row over its bound, or a row whose implementation crashed, is a FAIL.

Unit roundoff u(d) (half an ulp of 1): fp32 2^-24, fp16 2^-11, bf16 2^-8, fp64 2^-53. The rules:

- Same-dtype baseline (the eager reference in dtype d, vs the fp32 oracle, both the official
  mixed precision): rel L2 <= REF_ROUNDINGS * u(d) * sqrt(L) + acc(L). Each of L layers rounds
  its GEMM and attention outputs to d; independent roundings add in quadrature (sqrt(L)).
  Measured on CPU at the 1.3B width: 0.73 u at 1 layer, 0.90 u at 8 layers (bf16), against a
  limit of 2 u sqrt(L).
- Optimized implementation in dtype d (executor, torch.compile, ...): rel L2 <= 2 * e_ref +
  u(d) + acc(L), with e_ref the measured rel L2 of the same-dtype reference. The factor 2 is
  flash-attention's rule (an optimized path may be at most twice as wrong as the plain
  computation in the same dtype); u(d) is one extra rounding of the result; acc(L) =
  ACC_ULPS_PER_LAYER * L * u(fp32) covers fp32 accumulation done in another order (every path
  accumulates in fp32; ~8 reductions per layer, ~2 ulps each). In fp32 e_ref is 0 (the reference
  is the oracle) and the limit is (1 + 16 L) u(fp32): measured 4-5 u at 1-8 layers. For a guided
  velocity u + g (c - u) the last two terms are scaled by sqrt((g - 1)^2 + g^2) (6.4 at g = 5).
- Fused kernels vs the eager ops computing in fp32 and rounding to d: rel L2 <= 2 u(d) +
  KERNEL_ACC_ULPS * u(fp32): both round the same fp32 value to d, so they differ by at most one
  ulp (2 u relative) per element, plus the fp32 reduction order over a row.
- Attention vs float64 softmax: rel L2 <= 2 * e_plain + u(d) + KERNEL_ACC_ULPS * u(fp32), with
  e_plain the measured error of plain same-dtype attention (scores, softmax, PV each in d).
- VAE decode (uint8 frames) vs the fp32 chunked reference: PSNR >= 10 log10(255^2 / E), where
  the allowed rms error in uint8 levels is delta = 127.5 * (VAE_ROUNDINGS * u(d) + acc(VAE
  depth)) and E = delta^2 when delta >= 1, else delta (a pixel then moves one level with
  probability <= delta). VAE encode (posterior mean): rel L2 <= VAE_ROUNDINGS * u(d) + acc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

UNIT_ROUNDOFF = {"fp64": 2.0 ** -53, "fp32": 2.0 ** -24, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
REF_ROUNDINGS = 2        # per sqrt(layer), for the same-dtype baseline
ACC_ULPS_PER_LAYER = 16  # fp32 accumulation order, per layer
KERNEL_ACC_ULPS = 16     # fp32 reduction order inside one fused op
VAE_DEPTH = 40           # conv layers on the decoder's longest path (about 40 in Wan2.1's VAE)
# sqrt(VAE_DEPTH) ~ 6 independent roundings, doubled: the causal cache carries rounded features
# of one chunk into the next. Measured in bf16 at the 1.3B VAE (64x64, 5 frames, CPU): decode
# rel L2 4.0 u (PSNR 47.8 dB against a 30.1 dB floor), encode 3.5 u.
VAE_ROUNDINGS = 16
PASS, FAIL = "pass", "FAIL"

_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def unit_roundoff(dtype: torch.dtype | str) -> float:
    """u(d) = 2^-p for a dtype with p significand bits (torch dtype or fp32/bf16/fp16/fp64)."""
    name = _NAMES.get(dtype, dtype)
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype must be one of {', '.join(UNIT_ROUNDOFF)} (or the torch dtype), got {dtype!r}")
    return UNIT_ROUNDOFF[name]


@dataclass(frozen=True)
class Bound:
    """An accuracy bound: `metric` <= limit for "rel_l2", >= limit for "psnr"."""

    metric: str
    limit: float
    rule: str

    def __post_init__(self):
        if self.metric not in ("rel_l2", "psnr"):
            raise ValueError(f"metric must be 'rel_l2' or 'psnr', got {self.metric!r}")

    def verdict(self, row: dict) -> str:
        """PASS or FAIL of the row's measured metric; a missing or NaN measurement is a FAIL."""
        value = row.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return FAIL
        return PASS if (value <= self.limit if self.metric == "rel_l2" else value >= self.limit) else FAIL

    def label(self) -> str:
        return f"{self.metric} {'<=' if self.metric == 'rel_l2' else '>='} {self.limit:.3g}"

    def fields(self, row: dict) -> dict:
        """The row fields this bound sets: acc_metric, acc_limit, acc_rule, verdict."""
        return dict(acc_metric=self.metric, acc_limit=self.limit, acc_rule=self.rule, verdict=self.verdict(row))


def _accumulation(layers: int) -> float:
    return ACC_ULPS_PER_LAYER * layers * UNIT_ROUNDOFF["fp32"]


def _name(dtype) -> str:
    unit_roundoff(dtype)
    return _NAMES.get(dtype, dtype)


def reference_bound(dtype, layers: int) -> Bound:
    """The same-dtype eager reference against the fp32 oracle."""
    d, u = _name(dtype), unit_roundoff(dtype)
    limit = REF_ROUNDINGS * u * math.sqrt(layers) + _accumulation(layers)
    return Bound("rel_l2", limit, f"same-dtype baseline: {REF_ROUNDINGS} u({d}) sqrt(L={layers}) + "
                                  f"{ACC_ULPS_PER_LAYER} L u(fp32) = {limit:.3g}")


def optimized_bound(dtype, layers: int, baseline_rel_l2: float, baseline: str, amplification: float = 1.0) -> Bound:
    """An optimized implementation in `dtype`, held to twice the error of `baseline` (measured
    `baseline_rel_l2` against the same oracle). `amplification` scales the rounding terms when
    the output amplifies its inputs' errors (a guided velocity: see guidance_amplification); the
    measured baseline is amplified alike already."""
    d, u = _name(dtype), unit_roundoff(dtype)
    limit = 2 * baseline_rel_l2 + amplification * (u + _accumulation(layers))
    scaled = f"{amplification:.3g} x " if amplification != 1.0 else ""
    return Bound("rel_l2", limit, f"2 x {baseline} ({baseline_rel_l2:.3g}) + {scaled}(u({d}) + "
                                  f"{ACC_ULPS_PER_LAYER} L u(fp32)) (L={layers}) = {limit:.3g}")


def guidance_amplification(guidance: float) -> float:
    """How much u + g (c - u) amplifies independent relative errors e of c and u (of similar
    norm): the error (1 - g) e_u + g e_c has norm sqrt((g - 1)^2 + g^2) e."""
    return math.sqrt((guidance - 1) ** 2 + guidance ** 2)


def kernel_bound(dtype) -> Bound:
    """A fused kernel against the eager ops computing in fp32 and rounding to `dtype`."""
    d, u = _name(dtype), unit_roundoff(dtype)
    limit = 2 * u + KERNEL_ACC_ULPS * UNIT_ROUNDOFF["fp32"]
    return Bound("rel_l2", limit, f"one ulp per element: 2 u({d}) + {KERNEL_ACC_ULPS} u(fp32) = {limit:.3g}")


def attention_bound(dtype, plain_rel_l2: float) -> Bound:
    """An attention backend against float64 softmax, given plain same-dtype attention's error."""
    d, u = _name(dtype), unit_roundoff(dtype)
    limit = 2 * plain_rel_l2 + u + KERNEL_ACC_ULPS * UNIT_ROUNDOFF["fp32"]
    return Bound("rel_l2", limit, f"2 x plain {d} attention ({plain_rel_l2:.3g}) + u({d}) + "
                                  f"{KERNEL_ACC_ULPS} u(fp32) = {limit:.3g}")


def _vae_relative(dtype) -> float:
    return VAE_ROUNDINGS * unit_roundoff(dtype) + _accumulation(VAE_DEPTH)


def vae_frames_bound(dtype) -> Bound:
    """Decoded uint8 frames against the fp32 reference's: a PSNR floor."""
    d = _name(dtype)
    delta = 127.5 * _vae_relative(dtype)
    mse = delta * delta if delta >= 1 else delta
    limit = 10 * math.log10(255.0 ** 2 / mse)
    return Bound("psnr", limit, f"delta = 127.5 x ({VAE_ROUNDINGS} u({d}) + {ACC_ULPS_PER_LAYER} x {VAE_DEPTH} "
                                f"u(fp32)) = {delta:.3g} levels, MSE <= {'delta^2' if delta >= 1 else 'delta'}: "
                                f"PSNR >= {limit:.1f} dB")


def vae_tensor_bound(dtype) -> Bound:
    """A VAE output tensor (the encoder's posterior mean; decoded video when too small for
    frame metrics) against the fp32 reference's."""
    d = _name(dtype)
    limit = _vae_relative(dtype)
    return Bound("rel_l2", limit, f"{VAE_ROUNDINGS} u({d}) + {ACC_ULPS_PER_LAYER} x {VAE_DEPTH} u(fp32) = {limit:.3g}")
