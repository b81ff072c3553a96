"""Shared fixtures for the kernel tests: the device and flash-attention's error rule."""
import pytest
import torch


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _ulp_atol(out_dtype: torch.dtype, reference: torch.Tensor) -> float:
    """Absolute slack for rounding the fp32 result into `out_dtype`, sized to the output.

    `finfo.eps * max|ref|` is at least one ulp of every output element. Half-precision outputs get
    one such ulp (the kernel rounds once; Triton's interpreter truncates instead of rounding to
    nearest, so its error reaches a whole ulp). fp32 outputs get eight: the kernel reduces in a
    different order than PyTorch and chains a few fp32 ops, each adding ~half an ulp.
    """
    ulps = 8 if out_dtype == torch.float32 else 1
    return ulps * torch.finfo(out_dtype).eps * max(1.0, reference.abs().max().item())


def check_against_oracle(name: str, out: torch.Tensor, ref: torch.Tensor, low_ref: torch.Tensor) -> None:
    """Assert flash-attention's rule: the kernel's max error against the fp32 oracle `ref` is at
    most twice the error of PyTorch doing the same in low precision (`low_ref`), plus rounding slack.
    On failure, name the first mismatching indices."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != oracle {tuple(ref.shape)}"
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    err = (out64 - ref64).abs()
    low_err = (low_ref.double().cpu() - ref64).abs().max().item()
    bound = 2 * low_err + _ulp_atol(out.dtype, ref64)
    if not torch.isfinite(out64).all() or err.max().item() > bound:
        bad = (~(err <= bound)).nonzero()[:8].tolist()
        detail = ", ".join(f"{tuple(i)}: {out64[tuple(i)].item():.6g} vs {ref64[tuple(i)].item():.6g}"
                           for i in bad)
        raise AssertionError(
            f"{name}: max error {err.max().item():.3g} exceeds 2 * {low_err:.3g} (PyTorch in low "
            f"precision) + rounding slack = {bound:.3g}; {int((~(err <= bound)).sum())} mismatches, "
            f"first: {detail}"
        )


@pytest.fixture
def assert_matches_oracle():
    return check_against_oracle
