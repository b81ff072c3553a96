"""fp8 (float8_e4m3fn) weights for the DiT blocks' GEMMs, with dynamic per-token activation scales.

Numerics (what `fp8_linear_emulated` defines and `torch._scaled_mm` computes on sm_89+):

    w_scale[n] = max(|W[n, :]|) / 448          per output channel, fp32, fixed at quantization
    Wq         = fp8(W / w_scale[:, None])      448 = the largest finite e4m3fn value
    x_scale[m] = max(|x[m, :]|) / 448          per token, fp32, recomputed on every call
    xq         = fp8(x / x_scale[:, None])
    y          = (xq @ Wq^T) * x_scale[:, None] * w_scale[None, :] + bias   (fp32 accumulate, one rounding)

Per-token scales keep a token's quantization independent of the others, so splitting the sequence
over sequence-parallel ranks changes nothing. Only the six block GEMMs are quantized (QKV, out,
cross-attention q and out, both FFN layers: ~85 % of a 14B block's linear weights). The patch and
text embeddings, the cross-attention K/V (run once per request), the time embedding, modulation,
norms and head stay as they were: the official fp32 regions remain fp32.
"""
from __future__ import annotations

from typing import Callable

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
QUANT_MODES = ("fp8", "fp8-emulated")
# The block GEMMs that are quantized: store weight name -> its scale's name.
QUANTIZED = {"qkv_weight": "qkv_scale", "o_weight": "o_scale", "cross_q_weight": "cross_q_scale",
             "cross_o_weight": "cross_o_scale", "ffn1_weight": "ffn1_scale", "ffn2_weight": "ffn2_scale"}
# A scale never below this, so an all-zero row or token quantizes to zeros instead of NaN.
_MIN_AMAX = 1e-12

# linear(x [..., K], weight [N, K] (fp8 or dense), bias [N] | None, scale [N] fp32 | None) -> [..., N]
Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], fp32 scales [M]) with one scale per row (x ~= q * scale[:, None])."""
    x = x.float()
    scale = x.abs().amax(dim=-1).clamp(min=_MIN_AMAX) / FP8_MAX
    q = (x / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def fp8_linear_emulated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        scale: torch.Tensor) -> torch.Tensor:
    """The fp8 GEMM's numerics on any device: quantize the tokens, multiply the fp8 values in fp32
    (each product of two e4m3 values is exact in fp32), scale the fp32 accumulator, add the bias,
    round once to x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, x_scale = quantize_rows(x2)
    acc = xq.float() @ weight.float().t()
    y = acc * x_scale[:, None] * scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def fp8_linear_scaled_mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         scale: torch.Tensor) -> torch.Tensor:
    """The same GEMM through `torch._scaled_mm` (row-wise scales, sm_89+): a [M, K] row-major
    times the weight's transpose (column-major [K, N]), bf16 out with the bias in its epilogue."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, x_scale = quantize_rows(x2)
    y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale[:, None], scale_b=scale[None, :],
                         bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def check_fp8_support(mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """ValueError unless `mode` can run on `device` in compute dtype `dtype`."""
    if mode not in QUANT_MODES:
        raise ValueError(f"quant must be None or one of {', '.join(QUANT_MODES)}; got {mode!r}")
    if mode == "fp8-emulated":
        return
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"--quant fp8 needs an NVIDIA GPU with fp8 tensor cores (compute capability 8.9+: Ada, "
                         f"Hopper, Blackwell); this run is on {device.type}. quant='fp8-emulated' computes the same "
                         f"numerics anywhere (slowly), for quality checks")
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9) or not hasattr(torch, "_scaled_mm"):
        raise ValueError(f"--quant fp8 needs compute capability 8.9+ (Ada, Hopper, Blackwell) and torch._scaled_mm; "
                         f"{torch.cuda.get_device_name(device)} is sm_{capability[0]}{capability[1]}")
    if dtype != torch.bfloat16:
        raise ValueError(f"--quant fp8 runs its GEMMs with bf16 outputs (torch._scaled_mm's row-wise scaling); "
                         f"use --dtype bf16, got {dtype}")


def linear_for(mode: str) -> Linear:
    return fp8_linear_scaled_mm if mode == "fp8" else fp8_linear_emulated


def quantize_store(store, mode: str) -> None:
    """Replace the quantized GEMM weights of one block store by fp8 and register their scales."""
    for name, scale_name in QUANTIZED.items():
        weight = getattr(store, name)
        if mode == "fp8" and (weight.shape[0] % 16 or weight.shape[1] % 16):
            raise ValueError(f"--quant fp8: torch._scaled_mm needs GEMM sides that are multiples of 16; {name} is "
                             f"{tuple(weight.shape)} (use quant='fp8-emulated' for this model size)")
        q, scale = quantize_rows(weight)
        setattr(store, name, q)  # a registered buffer: reassigning keeps it registered
        store.register_buffer(scale_name, scale)


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's buffers and parameters (the executor keeps its weights in buffers)."""
    return sum(t.numel() * t.element_size() for t in (*module.buffers(), *module.parameters()))
