"""Ops dispatch: the fused norm ops and attention, resolved once into a frozen `OpSet`.

The executor calls `ops.layer_norm_modulate(...)` etc. and never asks which implementation it
got: the choice (Triton kernels on CUDA, fused-torch code on CPU) is made by `resolve_ops` when
the executor is built, so the forward itself has no dispatch branches.

The torch implementations below take exactly the Triton launchers' arguments and follow the
same numerics (fp32 compute, one rounding to `out_dtype`). They do not import triton, so a
CPU-only install without triton runs the "torch" ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .attention import AttentionBackend, resolve_attention_backend
from .engine_config import EngineConfig

# The fused norm ops, implemented by both backends (Triton kernels, fused torch).
OP_NAMES = ("layer_norm_modulate", "layer_norm_affine", "gated_residual_norm", "rms_norm_rope_qk", "rms_norm")
LINEAR_GELU_IMPLS = ("epilogue", "torch")


@dataclass(frozen=True)
class OpSet:
    """The ops one executor uses, bound to one device, dtype and head_dim.

    backend: "triton" or "torch" (the norm ops); attention: the resolved attention backend;
    linear_gelu: "epilogue" (cuBLASLt bias+GELU epilogue, CUDA) or "torch" (GEMM, then GELU).
    Signatures (shapes as in `wan_engine.kernels`):
      layer_norm_modulate(x [B,S,D], shift [B,D], scale [B,D], eps, out_dtype) -> [B,S,D]
      layer_norm_affine(x [B,S,D], weight [D], bias [D], eps, out_dtype) -> [B,S,D]
      gated_residual_norm(x, y [B,S,D], gate [B,D] | None, *, shift, scale | weight, bias, eps,
                          out_dtype) -> (x_new [B,S,D] in x's dtype, normed [B,S,D])
      rms_norm_rope_qk(q, k [B,S,D], weight_q, weight_k [D], cos, sin [S, head_dim//2], num_heads,
                       eps, out_dtype) -> (q, k) [B,S,H,head_dim]
      rms_norm(x [..., D], weight [D], eps, out_dtype) -> [..., D]
      linear_gelu(x [..., K], weight [N, K], bias [N]) -> GELU_tanh(x @ weight.T + bias) [..., N]
      attention(q [B,Sq,H,hd], k, v [B,Sk,H,hd], *, kv_len=None) -> [B,Sq,H,hd]
    """

    backend: str
    layer_norm_modulate: Callable
    layer_norm_affine: Callable
    gated_residual_norm: Callable
    rms_norm_rope_qk: Callable
    rms_norm: Callable
    attention: AttentionBackend
    linear_gelu: Callable
    linear_gelu_impl: str  # "epilogue" or "torch"


# ----------------------------------------------------------------------------------------------
# Fused-torch implementations (fp32 compute, one rounding at the end)
# ----------------------------------------------------------------------------------------------

def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """normed [B,S,D] fp32 * (1 + scale[b]) + shift[b], with shift/scale [B,D]."""
    return torch.addcmul(shift.float()[:, None], normed, 1 + scale.float()[:, None])


def layer_norm_modulate_torch(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`LN(x) * (1 + scale) + shift`; x [B,S,D], shift/scale [B,D] -> [B,S,D] of out_dtype (default x's)."""
    normed = F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return _modulate(normed, shift, scale).to(out_dtype or x.dtype)


def layer_norm_affine_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6,
                            out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`LN(x) * weight + bias`; x [B,S,D], weight/bias [D] -> [B,S,D] of out_dtype (default x's)."""
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps).to(out_dtype or x.dtype)


def gated_residual_norm_torch(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, *,
                              shift: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                              weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                              eps: float = 1e-6, out_dtype: torch.dtype | None = None,
                              inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`x_new = x + y * gate` (gate None: x + y), then LN(x_new) modulated (shift/scale [B,D]) or
    affine (weight/bias [D]). Returns (x_new in x's dtype, normed [B,S,D] of out_dtype, default y's)."""
    if (shift is None) == (weight is None):
        raise ValueError("pass either shift and scale (modulation) or weight and bias (affine)")
    branch = y.float() if gate is None else y.float() * gate.float()[:, None]
    x_new = (x.float() + branch).to(x.dtype)
    if inplace:
        x_new = x.copy_(x_new)
    # Normalize what is stored, as the kernel does, so normed is LN of the returned residual.
    if weight is not None:
        normed = F.layer_norm(x_new.float(), x.shape[-1:], weight.float(), bias.float(), eps)
    else:
        normed = _modulate(F.layer_norm(x_new.float(), x.shape[-1:], eps=eps), shift, scale)
    return x_new, normed.to(out_dtype or y.dtype)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm over the last dim with weight [D]; x [..., D] -> [..., D] of out_dtype (default x's)."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(out_dtype or x.dtype)


def rms_norm_rope_qk_torch(q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor,
                           cos: torch.Tensor, sin: torch.Tensor, num_heads: int, eps: float = 1e-6,
                           out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the whole dim, then interleaved-pair RoPE per head, for q and k.

    q, k [B,S,D]; cos, sin fp32 [S, head_dim//2]. Returns (q, k), each [B,S,H,head_dim] of out_dtype.
    """
    c, s = cos.float()[None, :, None, :], sin.float()[None, :, None, :]

    def norm_rotate(x, weight):
        x = rms_norm_torch(x, weight, eps, torch.float32)
        even, odd = x.unflatten(-1, (num_heads, -1, 2)).unbind(-1)  # [B, S, H, head_dim // 2]
        rotated = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1)
        return rotated.flatten(-2).to(out_dtype or q.dtype)

    return norm_rotate(q, weight_q), norm_rotate(k, weight_k)


def linear_gelu_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(tanh)(x @ weight.T + bias) as two passes: the GEMM's output is written, then read and
    rewritten by the GELU (in place, so no second buffer)."""
    return torch.ops.aten.gelu_(F.linear(x, weight, bias), approximate="tanh")


def linear_gelu_epilogue(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(tanh)(x @ weight.T + bias) in one GEMM: on CUDA `_addmm_activation(use_gelu=True)`
    runs cuBLASLt's bias+GELU epilogue (the tanh approximation, as Wan's FFN uses), applied to the
    fp32 accumulator before the one rounding to x's dtype. The unfused pair writes the [B*S, ffn]
    activation and reads it back: about 2.3 GB per layer at 1.3B 480p, batch 2, in bf16.
    Where torch cannot use the epilogue for these operands it applies the same tanh GELU itself.
    (On the CPU the op computes the exact erf GELU instead, so it is never used there.)"""
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------

def _triton_interpreting() -> bool:
    import triton

    # triton reads TRITON_INTERPRET into its knobs; `triton.jit` makes interpreted functions then.
    return bool(triton.knobs.runtime.interpret)


def _triton_available(device: torch.device) -> tuple[bool, str]:
    """(usable, why not) for the Triton kernels on `device`."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed (pip install triton)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available on this machine"
        return True, ""
    if device.type == "cpu" and _triton_interpreting():
        return True, ""
    return False, (f"Triton kernels need a CUDA device (or the interpreter, TRITON_INTERPRET=1, set before "
                   f"triton is imported, for tests on the CPU); got device {device.type!r}")


def _norm_ops(backend: str) -> tuple[Callable, ...]:
    if backend == "triton":
        from . import kernels

        return (kernels.layer_norm_modulate, kernels.layer_norm_affine, kernels.gated_residual_norm,
                kernels.rms_norm_rope_qk, kernels.rms_norm)
    return (layer_norm_modulate_torch, layer_norm_affine_torch, gated_residual_norm_torch, rms_norm_rope_qk_torch,
            rms_norm_torch)


def resolve_ops(engine_config: EngineConfig, device: torch.device | str, dtype: torch.dtype,
                head_dim: int) -> OpSet:
    """Choose the ops once for inputs on `device` in `dtype` with attention `head_dim`.

    ops "auto": Triton on CUDA when triton imports, torch otherwise (interpreted Triton is far too
    slow to be a default). "triton" where it cannot run, or an attention backend that cannot run,
    raises a ValueError / AttentionBackendError saying why.
    """
    if not isinstance(engine_config, EngineConfig):
        raise ValueError(f"engine_config must be an EngineConfig; got {type(engine_config).__name__}")
    device = torch.device(device)
    if engine_config.ops == "triton":
        usable, why = _triton_available(device)
        if not usable:
            raise ValueError(f"ops backend 'triton' requested but {why}; use ops='torch' or 'auto'")
        use_triton = True
    else:
        use_triton = engine_config.ops == "auto" and device.type == "cuda" and _triton_available(device)[0]
    attention = resolve_attention_backend(engine_config.attention, device, dtype, head_dim)
    backend = "triton" if use_triton else "torch"
    # The GEMM epilogue is a cuBLASLt feature, independent of the norm kernels' backend.
    gelu_impl = "epilogue" if device.type == "cuda" else "torch"
    linear_gelu = linear_gelu_epilogue if gelu_impl == "epilogue" else linear_gelu_torch
    return OpSet(backend, *_norm_ops(backend), attention, linear_gelu, gelu_impl)
