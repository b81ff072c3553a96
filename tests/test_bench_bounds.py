"""bench/bounds.py: every limit follows from the dtype's unit roundoff, written out by hand here.

u: fp32 2^-24 = 5.96e-8, bf16 2^-8 = 3.91e-3, fp16 2^-11 = 4.88e-4.
"""
import math

import pytest
import torch

from wan_engine.bench import bounds

U32, U16, UBF = 2.0 ** -24, 2.0 ** -11, 2.0 ** -8


def test_unit_roundoff_from_torch_dtypes_and_names():
    assert bounds.unit_roundoff(torch.float32) == bounds.unit_roundoff("fp32") == U32
    assert bounds.unit_roundoff(torch.bfloat16) == UBF and bounds.unit_roundoff(torch.float16) == U16
    assert bounds.unit_roundoff(torch.float64) == 2.0 ** -53
    # One rounding to nearest is within u relative: the definition, checked on bf16.
    x = torch.randn(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert ((x.bfloat16().double() - x).abs() / x.abs()).max().item() <= UBF
    with pytest.raises(ValueError, match="dtype must be one of"):
        bounds.unit_roundoff(torch.int8)


def test_dit_bounds_by_hand():
    ref = bounds.reference_bound(torch.bfloat16, 30)
    assert ref.limit == pytest.approx(2 * UBF * math.sqrt(30) + 16 * 30 * U32)
    assert ref.rule.startswith("same-dtype baseline: 2 u(bf16) sqrt(L=30)") and "0.0428" in ref.rule
    opt = bounds.optimized_bound("bf16", 30, 5e-3, "reference bf16")
    assert opt.limit == pytest.approx(2 * 5e-3 + UBF + 16 * 30 * U32)
    assert "2 x reference bf16 (0.005)" in opt.rule
    # fp32: the reference is the oracle, only the rounding and accumulation terms remain.
    assert bounds.optimized_bound("fp32", 2, 0.0, "oracle").limit == pytest.approx(33 * U32)
    guided = bounds.optimized_bound("fp32", 2, 0.0, "oracle", amplification=bounds.guidance_amplification(5.0))
    assert bounds.guidance_amplification(5.0) == pytest.approx(math.sqrt(41))
    assert guided.limit == pytest.approx(math.sqrt(41) * 33 * U32) and "6.4 x (u(fp32)" in guided.rule


def test_kernel_attention_and_vae_bounds_by_hand():
    assert bounds.kernel_bound(torch.float16).limit == pytest.approx(2 * U16 + 16 * U32)
    assert bounds.attention_bound("bf16", 2e-3).limit == pytest.approx(4e-3 + UBF + 16 * U32)
    # bf16 decode: delta = 127.5 (16 u + 640 u32) ~ 7.97 levels >= 1, so MSE <= delta^2.
    delta = 127.5 * (16 * UBF + 640 * U32)
    assert bounds.vae_frames_bound("bf16").limit == pytest.approx(20 * math.log10(255 / delta))
    # fp32: delta ~ 5e-3 < 1 level, so a pixel flips one level with probability <= delta: MSE <= delta.
    delta = 127.5 * (16 * U32 + 640 * U32)
    assert bounds.vae_frames_bound("fp32").limit == pytest.approx(10 * math.log10(255 ** 2 / delta))
    assert bounds.vae_tensor_bound("bf16").limit == pytest.approx(16 * UBF + 640 * U32)


def test_verdicts():
    upper = bounds.Bound("rel_l2", 1e-3, "r")
    lower = bounds.Bound("psnr", 40.0, "r")
    assert upper.verdict({"rel_l2": 1e-3}) == bounds.PASS and upper.verdict({"rel_l2": 2e-3}) == bounds.FAIL
    assert lower.verdict({"psnr": math.inf}) == bounds.PASS and lower.verdict({"psnr": 39.9}) == bounds.FAIL
    for row in ({}, {"rel_l2": None}, {"rel_l2": math.nan}):  # nothing measured is never a pass
        assert upper.verdict(row) == bounds.FAIL
    assert upper.fields({"rel_l2": 0.0}) == dict(acc_metric="rel_l2", acc_limit=1e-3, acc_rule="r", verdict="pass")
    assert lower.label() == "psnr >= 40"
    with pytest.raises(ValueError, match="metric must be"):
        bounds.Bound("cosine", 0.99, "r")
