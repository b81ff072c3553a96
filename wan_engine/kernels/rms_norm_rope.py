"""Self-attention q/k RMSNorm over the whole model dim, fused with the 3D rotary embedding.

Per token, for q and for k (dim = num_heads * head_dim):
    x = x * rsqrt(mean(x**2 over all dim channels) + eps) * weight
    then per head, pair i = (x[2i], x[2i+1]) rotated by the angle of position s:
    out[2i] = x[2i] * cos[s, i] - x[2i+1] * sin[s, i]
    out[2i+1] = x[2i] * sin[s, i] + x[2i+1] * cos[s, i]

The fp32 cos/sin table (seq, head_dim // 2) already holds the official frame/height/width split
of the channels, so the kernel only reads it. Official Wan rotates in float64 complex; fp32 here
keeps the error well below the bf16 output rounding.

One program handles one token of q and of k: the whole dim-wide row is in registers, viewed as
dim // 2 (even, odd) pairs, so the RMS over all heads needs no second pass. Pair p belongs to head
p // (head_dim // 2) and uses table column p % (head_dim // 2), which handles pair counts that are
not powers of two (head_dim 12 has 6). Outputs are contiguous (batch, seq, heads, head_dim).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_eps, check_float_tensor, check_grid, check_rows, resolve_out_dtype, row_block_and_warps


@triton.jit
def _rms_norm_rope_row(
    row_ptr, stride_d, weight_ptr, stride_w, out_ptr, cos, sin, D, eps, BLOCK_PAIRS: tl.constexpr
):
    """Normalize and rotate one row; the (even, odd) pairs are split off a contiguous load so
    that unit-stride rows load and store with wide vector accesses."""
    elems = tl.arange(0, 2 * BLOCK_PAIRS)
    mask = elems < D
    x = tl.load(row_ptr + elems * stride_d, mask=mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + elems * stride_w, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    x = x * rstd * weight
    x0, x1 = tl.split(tl.reshape(x, (BLOCK_PAIRS, 2)))
    out = tl.interleave(x0 * cos - x1 * sin, x0 * sin + x1 * cos)
    tl.store(out_ptr + elems, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_rope_qk_kernel(
    q_ptr,  # [B, S, D] any strides (e.g. a slice of a fused QKV output [B, S, 3 * D])
    k_ptr,  # [B, S, D] any strides
    weight_q_ptr,  # [D]
    weight_k_ptr,  # [D]
    cos_ptr,  # [S, HALF_HEAD] fp32
    sin_ptr,  # [S, HALF_HEAD] fp32
    q_out_ptr,  # [B, S, D] contiguous (= [B, S, H, head_dim])
    k_out_ptr,  # [B, S, D] contiguous
    S,
    D,
    eps,
    stride_qb,
    stride_qs,
    stride_qd,
    stride_kb,
    stride_ks,
    stride_kd,
    stride_wq,
    stride_wk,
    stride_cs,
    stride_cp,
    stride_ss,
    stride_sp,
    HALF_HEAD: tl.constexpr,
    BLOCK_PAIRS: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    pairs = tl.arange(0, BLOCK_PAIRS)
    pair_mask = pairs < D // 2
    column = pairs % HALF_HEAD
    cos = tl.load(cos_ptr + s * stride_cs + column * stride_cp, mask=pair_mask, other=1.0)
    sin = tl.load(sin_ptr + s * stride_ss + column * stride_sp, mask=pair_mask, other=0.0)
    cos = cos.to(tl.float32)
    sin = sin.to(tl.float32)
    out_offset = (b * S + s) * D
    _rms_norm_rope_row(
        q_ptr + b * stride_qb + s * stride_qs, stride_qd, weight_q_ptr, stride_wq,
        q_out_ptr + out_offset, cos, sin, D, eps, BLOCK_PAIRS,
    )  # fmt: skip
    _rms_norm_rope_row(
        k_ptr + b * stride_kb + s * stride_ks, stride_kd, weight_k_ptr, stride_wk,
        k_out_ptr + out_offset, cos, sin, D, eps, BLOCK_PAIRS,
    )  # fmt: skip


def _check_qk_inputs(q, k, weight_q, weight_k, cos, sin, num_heads):
    check_rows("q", q, 3)
    batch, seq, dim = q.shape
    check_grid(batch, seq)
    check_float_tensor("k", k, (batch, seq, dim), q.device)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")
    if dim % num_heads or (dim // num_heads) % 2:
        raise ValueError(
            f"num_heads must divide dim ({dim}) into an even head_dim; got num_heads={num_heads}"
        )
    half_head = dim // num_heads // 2
    check_float_tensor("weight_q", weight_q, (dim,), q.device)
    check_float_tensor("weight_k", weight_k, (dim,), q.device)
    check_float_tensor("cos", cos, (seq, half_head), q.device)
    check_float_tensor("sin", sin, (seq, half_head), q.device)
    return batch, seq, dim, half_head


def rms_norm_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    weight_q: torch.Tensor,
    weight_k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the whole dim, then interleaved-pair RoPE per head, for q and k in one launch.

    q, k: (batch, seq, dim), any strides (views into a fused QKV output are fine);
    weight_q, weight_k: (dim,); cos, sin: (seq, head_dim // 2), fp32 for full accuracy;
    head_dim = dim // num_heads, even. Returns (q_out, k_out), each a contiguous
    (batch, seq, num_heads, head_dim) tensor of `out_dtype` (default q.dtype).
    """
    batch, seq, dim, half_head = _check_qk_inputs(q, k, weight_q, weight_k, cos, sin, num_heads)
    eps = check_eps(eps)
    out_dtype = resolve_out_dtype(out_dtype, q.dtype)
    shape = (batch, seq, num_heads, 2 * half_head)
    q_out = torch.empty(shape, dtype=out_dtype, device=q.device)
    k_out = torch.empty(shape, dtype=out_dtype, device=q.device)
    block_elems, num_warps = row_block_and_warps(dim)
    _rms_norm_rope_qk_kernel[(seq, batch)](
        q, k, weight_q, weight_k, cos, sin, q_out, k_out,
        seq, dim, eps,
        *q.stride(),
        *k.stride(),
        weight_q.stride(0), weight_k.stride(0),
        *cos.stride(),
        *sin.stride(),
        HALF_HEAD=half_head,
        BLOCK_PAIRS=block_elems // 2,
        num_warps=num_warps,
    )  # fmt: skip
    return q_out, k_out


def rms_norm_rope_qk_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    weight_q: torch.Tensor,
    weight_k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch oracle of `rms_norm_rope_qk`.

    upcast=True computes in fp32; upcast=False runs the norm and the rotation in q's and k's own
    dtypes (the table cast to them), the low-precision baseline of the tests.
    """
    out_dtype = q.dtype if out_dtype is None else out_dtype

    def norm_rotate(x, weight):
        compute = torch.float32 if upcast else x.dtype
        x, weight = x.to(compute), weight.to(compute)
        c, s = cos.to(compute)[None, :, None, :], sin.to(compute)[None, :, None, :]
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight
        even, odd = x.unflatten(-1, (num_heads, -1, 2)).unbind(-1)  # (B, S, H, head_dim // 2)
        rotated = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1)
        return rotated.flatten(-2).to(out_dtype)

    return norm_rotate(q, weight_q), norm_rotate(k, weight_k)
