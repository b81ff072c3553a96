"""Gated residual add fused with the LayerNorm that follows it in the Wan block.

    x_new  = x + y * gate[b]          (gate None: x + y, the cross-attention residual)
    normed = LN(x_new) * (1 + scale[b]) + shift[b]    or    LN(x_new) * weight + bias

Eager PyTorch spends three passes over the residual stream here (the gated add, the LayerNorm,
the modulation); this kernel reads x and y once and writes x_new and normed once. The residual
stream x / x_new is fp32 (the official block adds in fp32); y and normed are usually bf16.
The add and the norm statistics are fp32 whatever the storage dtypes.
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
from .layer_norm_modulate import modulated_layer_norm_row


@triton.jit
def _gated_residual_norm_kernel(
    x_ptr,  # [B, S, D] residual stream, any strides
    y_ptr,  # [B, S, D] branch output, any strides
    gate_ptr,  # [B, D] gate (unused when HAS_GATE is false)
    x_new_ptr,  # [B, S, D] updated residual; may be x_ptr itself (in place)
    normed_ptr,  # [B, S, D] contiguous normalized output
    mult_ptr,  # scale [B, D] (modulation) or weight [D] (affine, batch stride 0)
    add_ptr,  # shift [B, D] (modulation) or bias [D] (affine, batch stride 0)
    S,
    D,
    eps,
    stride_xb,
    stride_xs,
    stride_xd,
    stride_yb,
    stride_ys,
    stride_yd,
    stride_gb,
    stride_gd,
    stride_nb,
    stride_ns,
    stride_nd,
    stride_mb,
    stride_md,
    stride_ab,
    stride_ad,
    HAS_GATE: tl.constexpr,
    AFFINE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + b * stride_xb + s * stride_xs + cols * stride_xd, mask=mask, other=0.0)
    y = tl.load(y_ptr + b * stride_yb + s * stride_ys + cols * stride_yd, mask=mask, other=0.0)
    branch = y.to(tl.float32)
    if HAS_GATE:
        gate = tl.load(gate_ptr + b * stride_gb + cols * stride_gd, mask=mask, other=0.0)
        branch = branch * gate.to(tl.float32)
    x_new = x.to(tl.float32) + branch
    x_new_stored = x_new.to(x_new_ptr.dtype.element_ty)
    tl.store(
        x_new_ptr + b * stride_nb + s * stride_ns + cols * stride_nd, x_new_stored, mask=mask
    )
    mult = tl.load(mult_ptr + b * stride_mb + cols * stride_md, mask=mask, other=0.0)
    add = tl.load(add_ptr + b * stride_ab + cols * stride_ad, mask=mask, other=0.0)
    # Normalize what was stored, so `normed` is exactly LN of the returned residual even when
    # the residual stream is kept in a low dtype.
    normed = modulated_layer_norm_row(
        x_new_stored.to(tl.float32), mask, D, eps, mult.to(tl.float32), add.to(tl.float32), AFFINE
    )
    tl.store(normed_ptr + (b * S + s) * D + cols, normed.to(normed_ptr.dtype.element_ty), mask=mask)


def _check_norm_params(shift, scale, weight, bias, batch, dim, device):
    modulate = shift is not None or scale is not None
    affine = weight is not None or bias is not None
    if modulate == affine:
        raise ValueError("pass either shift and scale (modulation) or weight and bias (affine)")
    if modulate:
        check_float_tensor("shift", shift, (batch, dim), device)
        check_float_tensor("scale", scale, (batch, dim), device)
    else:
        check_float_tensor("weight", weight, (dim,), device)
        check_float_tensor("bias", bias, (dim,), device)
    return affine


def gated_residual_norm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    *,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x_new = x + y * gate`, then `normed = LN(x_new)` modulated or affine; fp32 compute.

    x, y: (batch, seq, dim), any strides; gate: (batch, dim) or None for a plain add.
    Either shift, scale: (batch, dim) (modulation `* (1 + scale) + shift`) or weight, bias: (dim,)
    (affine). Returns (x_new, normed): x_new has x's dtype (x itself when inplace=True, else a new
    contiguous tensor); normed is a contiguous (batch, seq, dim) tensor of `out_dtype`
    (default y.dtype, the dtype the next GEMM consumes).
    """
    check_rows("x", x, 3)
    batch, seq, dim = x.shape
    check_grid(batch, seq)
    check_float_tensor("y", y, (batch, seq, dim), x.device)
    if gate is not None:
        check_float_tensor("gate", gate, (batch, dim), x.device)
    affine = _check_norm_params(shift, scale, weight, bias, batch, dim, x.device)
    eps = check_eps(eps)
    out_dtype = resolve_out_dtype(out_dtype, y.dtype)
    if inplace and any(st == 0 and n > 1 for st, n in zip(x.stride(), x.shape)):
        raise ValueError("inplace=True needs x to own its memory; got a broadcast (stride 0) view")

    x_new = x if inplace else torch.empty((batch, seq, dim), dtype=x.dtype, device=x.device)
    normed = torch.empty((batch, seq, dim), dtype=out_dtype, device=x.device)
    block, num_warps = row_block_and_warps(dim)
    if affine:
        mult, add = weight, bias
        mod_strides = (0, weight.stride(0), 0, bias.stride(0))
    else:
        mult, add = scale, shift
        mod_strides = (*scale.stride(), *shift.stride())
    gate_strides = gate.stride() if gate is not None else (0, 0)
    _gated_residual_norm_kernel[(seq, batch)](
        x, y, gate if gate is not None else x, x_new, normed, mult, add,
        seq, dim, eps,
        *x.stride(),
        *y.stride(),
        *gate_strides,
        *x_new.stride(),
        *mod_strides,
        HAS_GATE=gate is not None,
        AFFINE=affine,
        BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    return x_new, normed


def gated_residual_norm_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    *,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch oracle of `gated_residual_norm` (never in place).

    upcast=True computes in fp32; upcast=False lets every op run in the dtype PyTorch's type
    promotion picks for these inputs (the low-precision baseline of the tests).
    """
    out_dtype = y.dtype if out_dtype is None else out_dtype
    params = [gate, shift, scale, weight, bias]
    if upcast:
        x, y = x.float(), y.float()
        params = [p.float() if p is not None else None for p in params]
    gate, shift, scale, weight, bias = params
    branch = y if gate is None else y * gate[:, None]
    x_new = (x + branch).to(x.dtype)
    normed = F.layer_norm(x_new, x_new.shape[-1:], eps=eps)
    if weight is not None:
        normed = normed * weight + bias
    else:
        normed = normed * (1 + scale[:, None]) + shift[:, None]
    return x_new, normed.to(out_dtype)
