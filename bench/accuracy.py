"""Accuracy of an output against the eager reference: tensor metrics and video metrics.

Tensor metrics (any shape, any float dtype; computed in float64 so the metric adds no error of its
own): max abs error, relative L2 `||out - ref|| / ||ref||`, cosine similarity of the flattened
tensors. Video metrics on uint8 frames `[..., H, W]` or `[..., H, W, C]` (channels last, as
`WanPipeline` returns them): PSNR over all pixels, and SSIM (Wang et al. 2004) with an 11x11
Gaussian window of sigma 1.5, K1 0.01, K2 0.03, data range 255, over the "valid" window positions
of each frame and channel, averaged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def _pair(out, ref) -> tuple[torch.Tensor, torch.Tensor]:
    out, ref = torch.as_tensor(out), torch.as_tensor(ref)
    if out.shape != ref.shape:
        raise ValueError(f"out and ref must have the same shape, got {tuple(out.shape)} and {tuple(ref.shape)}")
    if out.numel() == 0:
        raise ValueError("out and ref must be non-empty")
    return out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)


def max_abs_error(out, ref) -> float:
    out, ref = _pair(out, ref)
    return (out - ref).abs().max().item()


def relative_l2(out, ref) -> float:
    """||out - ref||_2 / ||ref||_2; 0 when both are zero, inf when only ref is."""
    out, ref = _pair(out, ref)
    diff, norm = (out - ref).norm().item(), ref.norm().item()
    if norm == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / norm


def cosine_similarity(out, ref) -> float:
    """Cosine of the angle between the flattened tensors; 1 when both are zero, 0 when one is."""
    out, ref = _pair(out, ref)
    norms = out.norm().item() * ref.norm().item()
    if norms == 0:
        return 1.0 if out.norm().item() == ref.norm().item() else 0.0
    return float(torch.dot(out.flatten(), ref.flatten()).item() / norms)


def compare_tensors(out, ref) -> dict:
    """{"max_abs", "rel_l2", "cosine"} of `out` against `ref`."""
    return dict(max_abs=max_abs_error(out, ref), rel_l2=relative_l2(out, ref), cosine=cosine_similarity(out, ref))


# ------------------------------------------------------------------------------------------------
# Video metrics
# ------------------------------------------------------------------------------------------------

def _uint8_pair(frames, ref) -> tuple[np.ndarray, np.ndarray]:
    frames, ref = np.asarray(frames), np.asarray(ref)
    if frames.dtype != np.uint8 or ref.dtype != np.uint8:
        raise ValueError(f"frames and ref must be uint8, got {frames.dtype} and {ref.dtype}")
    if frames.shape != ref.shape:
        raise ValueError(f"frames and ref must have the same shape, got {frames.shape} and {ref.shape}")
    if frames.ndim < 2 or frames.size == 0:
        raise ValueError(f"frames must be non-empty images [..., H, W] or [..., H, W, C], got {frames.shape}")
    return frames, ref


def psnr(frames, ref) -> float:
    """Peak signal-to-noise ratio in dB of uint8 frames against `ref`; inf when identical."""
    frames, ref = _uint8_pair(frames, ref)
    mse = float(np.mean((frames.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE ** 2 / mse)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalized float64 Gaussian taps [size]; the 2-D window is its outer product with itself."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be an odd int >= 1, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return taps / taps.sum()


def _as_planes(images: np.ndarray, channels_last: bool) -> torch.Tensor:
    """[..., H, W(, C)] -> float64 [N, 1, H, W], one plane per frame and channel."""
    x = torch.from_numpy(images.astype(np.float64))
    if channels_last:
        x = x.movedim(-1, -3)  # [..., C, H, W]
    return x.reshape(-1, 1, *x.shape[-2:])


def ssim(frames, ref, *, channels_last: bool | None = None, window_size: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> float:
    """Mean SSIM of uint8 frames against `ref` (1.0 when identical).

    frames, ref: uint8 `[H, W]`, `[F, H, W]`, `[H, W, C]` or `[F, H, W, C]`. `channels_last`
    None treats a last axis of size 3 or 4 on an array of >= 3 dims as channels. H and W must be
    at least `window_size` (only window positions fully inside the image are scored).
    """
    frames, ref = _uint8_pair(frames, ref)
    if channels_last is None:
        channels_last = frames.ndim >= 3 and frames.shape[-1] in (3, 4)
    x, y = _as_planes(frames, channels_last), _as_planes(ref, channels_last)
    height, width = x.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(f"frames must be at least {window_size}x{window_size} pixels (the SSIM window), "
                         f"got {height}x{width}")
    taps = gaussian_window_1d(window_size, sigma)
    rows, cols = taps.view(1, 1, -1, 1), taps.view(1, 1, 1, -1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid positions only
        return F.conv2d(F.conv2d(z, rows), cols)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(index.mean().item())


def compare_frames(frames, ref) -> dict:
    """{"psnr", "ssim"} of uint8 frames against the reference frames."""
    return dict(psnr=psnr(frames, ref), ssim=ssim(frames, ref))
