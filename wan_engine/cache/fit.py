"""Fitting a model's calibration from the signals of uncached runs (`StepCache(record=True)`).

- MagCache ratios: per branch and step, the mean over runs of the recorded residual-norm ratio
  (mean over tokens of |r_t| / |r_t-1|, as MagCache's calibration measures it); step 0 is 1.0.
- TeaCache polynomial: `numpy.polyfit` of degree 4 from the input signal (the relative L1 change
  of e, or e0 for ret_steps) to the relative L1 change of the DiT output between consecutive
  steps, averaged over runs and both branches: the relation TeaCache's rescaling stands for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .calibration import TEACACHE_MODES, Calibration
from .schedules import BRANCHES

DEGREE = 4
MAX_PROMPTS = 256


def fit_calibration(runs: Sequence[dict], signals: dict[str, Sequence[float]], model: str, fitted: dict,
                    policies: str = "all") -> Calibration:
    """runs: each a StepCache's `signals` ({branch: {"residual_ratio": [...], "output_rel_l1": [...]}}),
    all with the same steps; signals: mode ("plain", "ret_steps") -> the input signal per step
    (entry 0 unused). policies: "teacache", "magcache" or "all"."""
    if not runs:
        raise ValueError("fitting a calibration needs at least one recorded run")
    steps = len(signals["plain"])
    teacache, magcache = {}, None
    if policies in ("magcache", "all"):
        ratios = []
        for branch in range(BRANCHES):
            per_run = np.array([run[branch]["residual_ratio"] for run in runs], dtype=np.float64)
            if per_run.shape[1] != steps - 1:
                raise ValueError(f"each run must record {steps - 1} residual ratios; got {per_run.shape[1]}")
            ratios.append((1.0, *(round(float(v), 5) for v in per_run.mean(0))))
        magcache = (ratios[0], ratios[1])
    if policies in ("teacache", "all"):
        target = np.mean([run[b]["output_rel_l1"] for run in runs for b in range(BRANCHES)], axis=0)
        for mode in TEACACHE_MODES:
            x = np.asarray(signals[mode][1:], dtype=np.float64)
            teacache[mode] = tuple(float(c) for c in np.polyfit(x, target, DEGREE))
    return Calibration(model, "fitted", teacache, magcache, dict(fitted))


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (at most MAX_PROMPTS)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"--prompts {path} does not exist")
    if path.stat().st_size > 1 << 20:
        raise ValueError(f"--prompts {path} is over 1 MB; give one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ValueError(f"--prompts must hold 1 to {MAX_PROMPTS} prompts, one per line; {path} has {len(prompts)}")
    return prompts
