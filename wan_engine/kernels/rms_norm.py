"""RMSNorm over the last dimension with a learned weight (the cross-attention q/k norms).

    out = x * rsqrt(mean(x**2) + eps) * weight

Computed in fp32 with a single rounding at the end (the official `WanRMSNorm` rounds to x's dtype
before the weight multiply; one rounding fewer is closer to the fp32 result). One program per row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_eps, check_float_tensor, check_rows, resolve_out_dtype, row_block_and_warps


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [N, D] rows, any strides
    weight_ptr,  # [D]
    out_ptr,  # [N, D] contiguous output
    D,
    eps,
    stride_xn,
    stride_xd,
    stride_w,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_xn + cols * stride_xd, mask=mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + cols * stride_w, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    tl.store(out_ptr + row * D + cols, (x * rstd * weight).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm of x: (..., dim) over its last dimension, with weight: (dim,); fp32 compute.

    Returns a contiguous tensor of x's shape and `out_dtype` (default x.dtype).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.numel() == 0:
        raise ValueError("x must be a non-empty torch.Tensor of shape (..., dim)")
    dim = x.shape[-1]
    rows = x.reshape(-1, dim)  # a view whenever the leading dimensions allow one
    check_rows("x", rows, 2)
    check_float_tensor("weight", weight, (dim,), x.device)
    eps = check_eps(eps)
    out = torch.empty(x.shape, dtype=resolve_out_dtype(out_dtype, x.dtype), device=x.device)
    block, num_warps = row_block_and_warps(dim)
    _rms_norm_kernel[(rows.shape[0],)](
        rows, weight, out,
        dim, eps,
        *rows.stride(),
        weight.stride(0),
        BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    return out


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Pure-torch oracle of `rms_norm`.

    upcast=True computes in fp32; upcast=False lets every op run in the dtype PyTorch's type
    promotion picks for these inputs (the low-precision baseline of the tests).
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if upcast:
        x, weight = x.float(), weight.float()
    return (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight).to(out_dtype)
