"""The Wan VAE's RMS_norm over channels, optionally followed by SiLU, in one pass.

    out = silu(x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma)

on video activations [B, C, T, H, W] (the norm runs over dim 1, as the official
`F.normalize(x, dim=1) * scale * gamma`). In the reference every residual block runs the norm and
the SiLU as two full passes over a tensor that, in the upsampling tail, is the size of the video
times the channel count; fused they read and write it once. fp32 compute, one rounding at the end.

One program per (sample, block of BLOCK_S positions): it loads the [C, BLOCK_S] tile (channels
strided by T*H*W, or by 1 in channels-last-3d), reduces over channels in registers and writes the
tile back in the input's layout, so that the `channels-last` VAE lever's convolutions get
channels-last activations and need no conversion copy.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_float_tensor, check_rows, resolve_out_dtype

NORM_FLOOR = 1e-12  # F.normalize's default eps: the floor of the norm, not added to it
MAX_CHANNELS = 1024  # the Wan VAE's widest stage has 384


@triton.jit
def _channel_rms_norm_silu_kernel(
    x_ptr,  # [B, C, S] (S = T*H*W), any strides
    gamma_ptr,  # [C]
    out_ptr,  # [B, C, S], contiguous or channels-last (see the output strides)
    C,
    S,
    scale,  # sqrt(C)
    stride_xb,
    stride_xc,
    stride_xs,
    stride_g,
    stride_ob,
    stride_oc,
    stride_os,
    SILU: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    sample = tl.program_id(1).to(tl.int64)
    positions = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    channels = tl.arange(0, BLOCK_C).to(tl.int64)  # C * stride_c passes 2**31 at 1080p chunk sizes
    mask = (channels[:, None] < C) & (positions[None, :] < S)
    offsets = sample * stride_xb + channels[:, None] * stride_xc + positions[None, :] * stride_xs
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + channels * stride_g, mask=channels < C, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=0))
    y = x * (scale / tl.maximum(norm, 1e-12))[None, :] * gamma[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    out = sample * stride_ob + channels[:, None] * stride_oc + positions[None, :] * stride_os
    tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=mask)


def _block_s(channels: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_S, warps): about 4096 values per program (16 per thread at 8 warps)."""
    block_c = triton.next_power_of_2(channels)
    block_s = max(1, min(256, 4096 // block_c))
    return block_c, block_s, 8 if block_c * block_s >= 4096 else 4


def channel_rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, silu: bool = True,
                          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x: (B, C, ...) with the norm over dim 1; gamma: (C,) (the checkpoint's [C, 1, 1, 1] reshaped).

    Returns a tensor of x's shape and `out_dtype` (default x.dtype): channels-last-3d when x is
    (a 5-D tensor in that layout), contiguous otherwise."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.numel() == 0:
        raise ValueError("x must be a non-empty torch.Tensor of shape (B, C, ...)")
    b, c = x.shape[:2]
    if c > MAX_CHANNELS:
        raise ValueError(f"x must have at most {MAX_CHANNELS} channels (a position's channels are held in "
                         f"registers); got {c}")
    rows = x.reshape(b, c, -1)  # a view for contiguous input
    check_rows("x", rows, 3)
    check_float_tensor("gamma", gamma, (c,), x.device)
    layout = torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last_3d) else torch.contiguous_format
    out = torch.empty(x.shape, dtype=resolve_out_dtype(out_dtype, x.dtype), device=x.device, memory_format=layout)
    out_rows = out.view(b, c, -1)  # a view in both layouts: the kernel writes through it
    block_c, block_s, warps = _block_s(c)
    positions = rows.shape[2]
    if b > 65535:
        raise ValueError(f"x's batch must be <= 65535; got {b}")
    _channel_rms_norm_silu_kernel[(triton.cdiv(positions, block_s), b)](
        rows, gamma, out,
        c, positions, float(c) ** 0.5,
        *rows.stride(),
        gamma.stride(0),
        *out_rows.stride(),
        SILU=silu,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        num_warps=warps,
    )  # fmt: skip
    return out


def channel_rms_norm_silu_ref(x: torch.Tensor, gamma: torch.Tensor, silu: bool = True,
                              out_dtype: torch.dtype | None = None, upcast: bool = True) -> torch.Tensor:
    """Pure-torch oracle: the official `F.normalize(x, dim=1) * sqrt(C) * gamma`, then SiLU.

    upcast=True computes in fp32; upcast=False in x's dtype, as the reference VAE in bf16 does
    (the low-precision baseline of the tests)."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if upcast:
        x, gamma = x.float(), gamma.float()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = torch.nn.functional.normalize(x, dim=1, eps=NORM_FLOOR) * x.shape[1] ** 0.5 * gamma.view(shape)
    return (torch.nn.functional.silu(y) if silu else y).to(out_dtype)
