"""The skip decisions of the three policies, as pure functions of their signals.

TeaCache and MagCache decide from signals known before the first step (the timestep embedding,
calibrated ratios), so their whole schedule is computed up front: no host read in the loop, the
same on every rank. The first-block cache decides from the first block's residual, at run time.

A schedule is one list per CFG branch (0 conditional, 1 unconditional) of booleans, True where
the block stack runs. The official implementations count calls (two per step, conditional on even
calls); their per-call rules are applied here to call 2*step + branch, so any edge case at an odd
call count falls where the official one does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BRANCHES = 2


def teacache_schedule(rel_l1: Sequence[float], coefficients: Sequence[float], threshold: float,
                      ret_steps: bool) -> list[list[bool]]:
    """TeaCache for Wan2.1. rel_l1[i] (i >= 1): mean |s_i - s_(i-1)| / mean |s_(i-1)| of the
    signal (e, or e0 with ret_steps) between steps i-1 and i; rel_l1[0] is unused.

    Call c (of 2*steps) always computes when c < ret (2, or 10 with ret_steps) or c >= cutoff
    (2*steps - 2, or 2*steps with ret_steps), and resets the branch's accumulator; otherwise the
    accumulator grows by poly(rel_l1) and the call computes (resetting it) once it reaches the
    threshold. The signal is the same for both branches, so both get the same schedule.
    """
    if len(coefficients) < 1:
        raise ValueError("coefficients must hold at least one polynomial coefficient")
    steps = len(rel_l1)
    ret, cutoff = (10, 2 * steps) if ret_steps else (2, 2 * steps - 2)
    rescale = np.poly1d(coefficients)
    schedule = [[False] * steps for _ in range(BRANCHES)]
    accumulated = [0.0] * BRANCHES
    for step in range(steps):
        for branch in range(BRANCHES):
            call = 2 * step + branch
            if call < ret or call >= cutoff:
                compute, accumulated[branch] = True, 0.0
            else:
                accumulated[branch] += float(rescale(rel_l1[step]))
                # Threshold 0 always computes, even where a fitted polynomial dips below zero
                # (there the official rule would still skip).
                compute = threshold == 0 or accumulated[branch] >= threshold
                if compute:
                    accumulated[branch] = 0.0
            schedule[branch][step] = compute
    return schedule


def nearest_interp(values: Sequence[float], length: int) -> list[float]:
    """MagCache's resampling of per-step ratios calibrated at another step count: entry i takes
    the calibrated step round(i * (n - 1) / (length - 1)) (numpy's round, half to even)."""
    values = np.asarray(values, dtype=np.float64)
    if length < 1:
        raise ValueError(f"length must be >= 1; got {length}")
    if length == 1:
        return [float(values[-1])]
    scale = (len(values) - 1) / (length - 1)
    return [float(v) for v in values[np.round(np.arange(length) * scale).astype(int)]]


def magcache_schedule(ratios: Sequence[Sequence[float]], steps: int, threshold: float, max_skips: int,
                      retention: float, switch: int | None = None, cache_high_noise: bool = True) -> list[list[bool]]:
    """MagCache for Wan2.1 and Wan2.2. ratios: per branch, the calibrated residual-norm ratio of
    each step to the previous one (any length; resampled to `steps` by `nearest_interp`).
    switch: a two-expert model's first low-noise step (None: one DiT).

    Some calls always compute (`_retained`: the first `retention` of the run, or of each expert's
    steps). From there each call multiplies the branch's accumulated ratio by its step's ratio,
    counts one more step and adds |1 - accumulated ratio| to the accumulated error; it reuses the
    residual while the error is below the threshold and the count is at most `max_skips`, else it
    computes and resets ratio, count and error. Retained calls leave the accumulators alone, and
    so do step 0 and the switch step, which always compute: a DiT has no residual of its own to
    reuse yet (where retention is below one call per branch the official code would reach step 0
    with an empty cache, or give the low-noise expert the high-noise one's residual).
    """
    if len(ratios) != BRANCHES:
        raise ValueError(f"ratios must hold {BRANCHES} branches (conditional, unconditional); got {len(ratios)}")
    if switch is not None and not 0 <= switch <= steps:
        raise ValueError(f"switch must be a step in [0, {steps}]; got {switch}")
    per_step = [nearest_interp(r, steps) if len(r) != steps else [float(v) for v in r] for r in ratios]
    schedule = [[True] * steps for _ in range(BRANCHES)]
    ratio, count, error = [1.0] * BRANCHES, [0] * BRANCHES, [0.0] * BRANCHES
    for step in range(steps):
        for branch in range(BRANCHES):
            if step in (0, switch) or _retained(2 * step + branch, 2 * steps, retention, switch, cache_high_noise):
                continue
            ratio[branch] *= per_step[branch][step]
            count[branch] += 1
            error[branch] += abs(1 - ratio[branch])
            if error[branch] < threshold and count[branch] <= max_skips:
                schedule[branch][step] = False
            else:
                ratio[branch], count[branch], error[branch] = 1.0, 0, 0.0
    return schedule


def _retained(call: int, calls: int, retention: float, switch: int | None, cache_high_noise: bool) -> bool:
    """Whether call `call` of `calls` (two per step, conditional first) always computes, by the
    official rules: one DiT (MagCache4Wan2.1, and TI2V-5B) retains the first int(calls * retention)
    calls; two experts (MagCache4Wan2.2) with the switch at call s retain the first int(s *
    retention) calls and the low-noise ones from s up to (calls - s) * retention + s inclusive, or,
    for I2V-A14B (`cache_high_noise` False), every high-noise call and the first
    int((calls - s) * retention) low-noise ones."""
    if switch is None:
        return call < int(calls * retention)
    s = 2 * switch
    if not cache_high_noise:
        return call < int(s + (calls - s) * retention)
    return call < int(s * retention) or s <= call <= (calls - s) * retention + s


def first_block_reuses(change: float, threshold: float) -> bool:
    """The first-block cache: reuse the rest of the stack when the relative L1 change of the first
    block's residual since the last computed step, mean |r - r_prev| / mean |r_prev|, is below
    the threshold (strictly: threshold 0 never reuses)."""
    return change < threshold
