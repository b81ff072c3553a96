"""Flow-matching noise schedules, reproduced dtype by dtype from the official Wan2.1 samplers.

Convention: sigma is the noise fraction, x_sigma = (1 - sigma) * x0 + sigma * noise, and the model
predicts the flow velocity v = noise - x0. A schedule is a pair

    sigmas:    float32 [steps + 1], strictly decreasing, ending with an appended 0.0
    timesteps: int64   [steps], the model's time input, sigma * 1000 truncated toward zero

The two official solvers build their schedules differently, and the difference is visible:

- UniPC (`FlowUniPCMultistepScheduler`, built with shift=1, then `set_timesteps(N, shift=s)`):
  the base grid runs from the training schedule's first sigma, `1 - 1/1000` rounded to float32
  (0.99900001287..., not the float64 0.999) down to 0, so the first sigma is always below 1.
- DPM++ (`get_sampling_sigmas` + `retrieve_timesteps(sigmas=...)`): the base grid is
  `linspace(1, 0, N + 1)[:N]` in float64, so the first sigma is exactly 1.0 (first timestep 1000).

In both, the shift `s*sig / (1 + (s-1)*sig)` and the timesteps are computed in float64 and only the
final sigma array is rounded to float32; the timesteps therefore come from the float64 sigmas.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def _check_steps_shift(steps: int, shift: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float, np.floating)) or not (
        math.isfinite(shift) and shift > 0
    ):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")


def _train_sigma_range() -> tuple[float, float]:
    """(sigma_max, sigma_min) of the 1000-step training schedule, as the official scheduler sees them.

    The official constructor builds `1 - linspace(1, 1/1000, 1000)[::-1]` in float64, stores it as a
    float32 tensor and reads the ends back with `.item()`; the float32 rounding of the top end is
    part of the schedule (it moves every sigma of the grid).
    """
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
    sigma_min = 0.0
    return sigma_max, sigma_min


def _finish(base: np.ndarray, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a float64 base grid [steps], then derive int64 timesteps and float32 sigmas [steps + 1]."""
    shifted = shift * base / (1 + (shift - 1) * base)
    # The official code casts with torch's .to(int64): truncation toward zero of the float64 value.
    timesteps = torch.from_numpy(shifted * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([shifted, [0.0]]).astype(np.float32))
    return sigmas, timesteps


def flow_sigmas(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official UniPC schedule (also used here for Euler).

    Args:
        steps: number of denoising steps, >= 1.
        shift: timestep shift s > 0 (1 = no shift; Wan2.1 T2V uses 5.0, I2V 480p 3.0).
    Returns:
        sigmas: float32 [steps + 1], first < 1, last 0.
        timesteps: int64 [steps].
    """
    _check_steps_shift(steps, shift)
    return _finish(unipc_base_grid(steps), shift)


def unipc_base_grid(steps: int) -> np.ndarray:
    """The official UniPC grid before the shift: float64 [steps], float32(0.999) down to 0 (excluded)."""
    sigma_max, sigma_min = _train_sigma_range()
    return np.linspace(sigma_max, sigma_min, steps + 1)[:-1]


def dpm_flow_sigmas(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official DPM++ schedule: like `flow_sigmas` but the base grid starts at exactly 1.0.

    The official code shifts the grid here and then `set_timesteps` applies its configured shift
    of 1, which is the identity in float64, so one shift is all that happens.

    Returns:
        sigmas: float32 [steps + 1], first 1.0, last 0.
        timesteps: int64 [steps], first 1000.
    """
    _check_steps_shift(steps, shift)
    base = np.linspace(1.0, 0.0, steps + 1)[:steps]
    return _finish(base, shift)
