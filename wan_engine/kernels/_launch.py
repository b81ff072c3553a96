"""Input checks and launch settings shared by the kernel launchers.

Every launcher validates before it launches: a Triton kernel handed a wrong shape reads out of
bounds silently, so the errors here name the parameter and what it accepts.
"""
from __future__ import annotations

import torch
import triton

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_NAMES = "float32, float16 or bfloat16"
# One program holds a whole row in registers; 8192 channels (Wan's largest dim is 5120) compile
# for sm_90 without spills at 16 warps.
MAX_ROW = 8192


def check_float_tensor(name: str, tensor, shape: tuple[int, ...], device: torch.device) -> None:
    """Raise ValueError unless `tensor` is a float tensor of exactly `shape` on `device`."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be {_DTYPE_NAMES}; got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} must be on {device} like the input; got {tensor.device}")


def check_rows(name: str, tensor, ndim: int) -> None:
    """Raise ValueError unless `tensor` is a non-empty float tensor with `ndim` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be {_DTYPE_NAMES}; got {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must not be empty; got shape {tuple(tensor.shape)}")


def resolve_out_dtype(out_dtype, default: torch.dtype) -> torch.dtype:
    if out_dtype is None:
        return default
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be None or {_DTYPE_NAMES}; got {out_dtype}")
    return out_dtype


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise ValueError(f"eps must be a float in (0, 1); got {eps!r}")
    return float(eps)


def check_grid(batch: int, seq: int) -> None:
    # Tokens go on grid axis 0 (limit 2**31 - 1), samples on axis 1 (limit 65535).
    if batch > 65535:
        raise ValueError(f"batch size must be <= 65535; got {batch}")
    if seq >= 2**31:
        raise ValueError(f"sequence length must be < 2**31; got {seq}")


def row_block_and_warps(n: int) -> tuple[int, int]:
    """Block size (next power of two >= n) and warps for a kernel holding one row of n values.

    About 8 values per thread keeps a whole row in registers without spilling, up to 16 warps;
    dim 1536 -> (2048, 8), dim 5120 -> (8192, 16), dim 24 -> (32, 1).
    """
    if n > MAX_ROW:
        raise ValueError(f"dim must be <= {MAX_ROW} (a row is held in registers); got dim={n}")
    block = triton.next_power_of_2(n)
    return block, min(16, max(1, block // 256))
