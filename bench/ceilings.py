"""The card's practical ceilings, measured once at the start of a benchmark run.

- GPU: a large bf16 matmul (TFLOP/s, counting 2*M*N*K) and a device-to-device copy of a large
  buffer (GB/s, counting the read and the write). These, not the datasheet, are the roof every
  "% of floor" is relative to: a kernel at 100% does what the card demonstrably can.
- CPU: a small fp32 matmul and a memcpy, labelled as CPU numbers. They keep the CPU tables
  meaningful (and the code path exercised) but say nothing about a GPU.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

import torch

from .roofline import Ceilings
from .timing import measure

GPU_MATMUL_SIZE = 8192            # 1.1 TFLOP per call: long enough to reach the clock-limited peak
GPU_COPY_BYTES = 1 << 30          # 1 GiB: far beyond L2, so the copy streams through HBM
CPU_MATMUL_SIZE = 512
CPU_COPY_BYTES = 32 << 20


@dataclass(frozen=True)
class MeasuredCeilings:
    matmul_tflops: float
    copy_gbps: float
    matmul_dtype: str
    matmul_size: int
    copy_bytes: int
    device: str       # "cuda" or "cpu"
    label: str        # e.g. "NVIDIA H100 80GB HBM3: bf16 matmul 8192^3, D2D copy 1 GiB"

    def roofline(self) -> Ceilings:
        """As the roofline model's `Ceilings` (its matmul field holds the CPU's fp32 rate on CPU)."""
        return Ceilings(self.matmul_tflops, self.copy_gbps)

    def to_dict(self) -> dict:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _matmul_seconds(device: torch.device, dtype: torch.dtype, size: int, repeats: int, warmup: int) -> float:
    """Fastest seconds of one [size, size] @ [size, size] product of random operands."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device).to(dtype)
    b = torch.randn(size, size, generator=gen, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    return measure(lambda: torch.matmul(a, b, out=out), device, repeats, warmup)[0].min_s


def _copy_seconds(device: torch.device, nbytes: int, repeats: int, warmup: int) -> float:
    """Fastest seconds of copying `nbytes` (fp32 elements) to another buffer on the same device."""
    gen = torch.Generator(device=device).manual_seed(1)
    src = torch.rand(nbytes // 4, generator=gen, device=device)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device, repeats, warmup)[0].min_s


def measure_ceilings(device: torch.device | str, *, matmul_size: int | None = None,
                     copy_bytes: int | None = None, repeats: int | None = None,
                     warmup: int | None = None) -> MeasuredCeilings:
    """Matmul TFLOP/s and copy GB/s on `device` (bf16 on CUDA, fp32 on CPU).

    A ceiling is the best the device demonstrated, so each rate comes from the fastest of
    `repeats` timed calls (not the median, as for the workloads measured against it). Sizes
    default to GPU_* on CUDA and CPU_* elsewhere. Operands are random, not zero: some hardware
    draws less power, and so clocks higher, on zeros.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    size = _positive_int("matmul_size", matmul_size or (GPU_MATMUL_SIZE if on_gpu else CPU_MATMUL_SIZE))
    nbytes = _positive_int("copy_bytes", copy_bytes or (GPU_COPY_BYTES if on_gpu else CPU_COPY_BYTES))
    if nbytes < 4:
        raise ValueError(f"copy_bytes must be >= 4 (one fp32 element), got {nbytes}")
    repeats = repeats if repeats is not None else (20 if on_gpu else 5)
    warmup = warmup if warmup is not None else (5 if on_gpu else 1)
    dtype = torch.bfloat16 if on_gpu else torch.float32

    matmul_s = _matmul_seconds(device, dtype, size, repeats, warmup)
    copy_s = _copy_seconds(device, nbytes, repeats, warmup)

    dtype_name = str(dtype).removeprefix("torch.")
    name = _device_name(device)
    kind = "D2D copy" if on_gpu else "memcpy"
    label = f"{name}: {dtype_name} matmul {size}^3, {kind} {nbytes / 2**20:.0f} MiB"
    if not on_gpu:
        label = f"CPU ceilings (not a GPU roof): {label}"
    return MeasuredCeilings(
        matmul_tflops=2 * size ** 3 / matmul_s / 1e12,
        copy_gbps=2 * (nbytes // 4) * 4 / copy_s / 1e9,  # read + write
        matmul_dtype=dtype_name, matmul_size=size, copy_bytes=nbytes, device=device.type, label=label,
    )
