"""LayerNorm fused with the Wan block's modulation, or with a plain affine (norm3).

    modulate:  out = LN(x) * (1 + scale[b]) + shift[b]   (norm1, norm2 and the head; no LN params)
    affine:    out = LN(x) * weight + bias               (norm3, cross_attn_norm)

One program normalizes one token row; the whole row (dim <= 8192) stays in registers, so x is read
once and the output written once. Statistics and arithmetic are fp32 whatever the storage dtypes,
as in the official `WanLayerNorm` (which upcasts) and its fp32 modulation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import (
    check_eps,
    check_float_tensor,
    check_grid,
    check_rows,
    resolve_out_dtype,
    row_block_and_warps,
)


@triton.jit
def modulated_layer_norm_row(x, mask, n_cols, eps, mult, add, AFFINE: tl.constexpr):
    """LN of one fp32 row [BLOCK] (masked lanes hold 0), then `* mult + add` (AFFINE) or
    `* (1 + mult) + add` (modulation). Biased variance, as torch.nn.LayerNorm."""
    mean = tl.sum(x, axis=0) / n_cols
    centered = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / n_cols
    normed = centered * tl.rsqrt(var + eps)
    if not AFFINE:
        mult = mult + 1.0
    return normed * mult + add


@triton.jit
def _layer_norm_modulate_kernel(
    x_ptr,  # [B, S, D] input, any float dtype, any strides
    mult_ptr,  # scale [B, D] (modulation) or weight [D] (affine, passed with batch stride 0)
    add_ptr,  # shift [B, D] (modulation) or bias [D] (affine, batch stride 0)
    out_ptr,  # [B, S, D] contiguous output
    S,
    D,
    eps,
    stride_xb,
    stride_xs,
    stride_xd,
    stride_mb,
    stride_md,
    stride_ab,
    stride_ad,
    AFFINE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + b * stride_xb + s * stride_xs + cols * stride_xd, mask=mask, other=0.0)
    mult = tl.load(mult_ptr + b * stride_mb + cols * stride_md, mask=mask, other=0.0)
    add = tl.load(add_ptr + b * stride_ab + cols * stride_ad, mask=mask, other=0.0)
    out = modulated_layer_norm_row(
        x.to(tl.float32), mask, D, eps, mult.to(tl.float32), add.to(tl.float32), AFFINE
    )
    tl.store(out_ptr + (b * S + s) * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x, mult, add, eps, out_dtype, affine):
    """mult, add: scale, shift (batch, dim) for modulation; weight, bias (dim,) when affine."""
    batch, seq, dim = x.shape
    block, num_warps = row_block_and_warps(dim)
    out = torch.empty((batch, seq, dim), dtype=out_dtype, device=x.device)
    # Affine params are shared by all samples: batch stride 0.
    stride_mb, stride_md = (0, mult.stride(0)) if affine else mult.stride()
    stride_ab, stride_ad = (0, add.stride(0)) if affine else add.stride()
    _layer_norm_modulate_kernel[(seq, batch)](
        x, mult, add, out,
        seq, dim, eps,
        *x.stride(),
        stride_mb, stride_md,
        stride_ab, stride_ad,
        AFFINE=affine,
        BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    return out


def layer_norm_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`LN(x) * (1 + scale) + shift` with per-sample modulation, computed in fp32.

    x: (batch, seq, dim), any strides; shift, scale: (batch, dim), shared by a sample's tokens.
    Returns a contiguous (batch, seq, dim) tensor of `out_dtype` (default x.dtype).
    """
    check_rows("x", x, 3)
    batch, seq, dim = x.shape
    check_grid(batch, seq)
    check_float_tensor("shift", shift, (batch, dim), x.device)
    check_float_tensor("scale", scale, (batch, dim), x.device)
    return _launch(x, scale, shift, check_eps(eps), resolve_out_dtype(out_dtype, x.dtype), affine=False)


def layer_norm_affine(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`LN(x) * weight + bias` (torch.nn.LayerNorm with affine params), computed in fp32.

    x: (batch, seq, dim), any strides; weight, bias: (dim,).
    Returns a contiguous (batch, seq, dim) tensor of `out_dtype` (default x.dtype).
    """
    check_rows("x", x, 3)
    batch, seq, dim = x.shape
    check_grid(batch, seq)
    check_float_tensor("weight", weight, (dim,), x.device)
    check_float_tensor("bias", bias, (dim,), x.device)
    return _launch(x, weight, bias, check_eps(eps), resolve_out_dtype(out_dtype, x.dtype), affine=True)


def layer_norm_modulate_ref(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Pure-torch oracle of `layer_norm_modulate`.

    upcast=True computes in fp32; upcast=False lets every op run in the dtype PyTorch's type
    promotion picks for these inputs (the low-precision baseline of the tests).
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if upcast:
        x, shift, scale = x.float(), shift.float(), scale.float()
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)
    return (normed * (1 + scale[:, None]) + shift[:, None]).to(out_dtype)


def layer_norm_affine_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Pure-torch oracle of `layer_norm_affine` (upcast as in `layer_norm_modulate_ref`)."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if upcast:
        x, weight, bias = x.float(), weight.float(), bias.float()
    return (F.layer_norm(x, x.shape[-1:], eps=eps) * weight + bias).to(out_dtype)
