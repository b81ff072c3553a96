"""Timing of one callable: warm-up, then median and p20/p80 over repeats.

On a GPU each repeat is bracketed by CUDA events on the current stream and the end event is
waited on before the next repeat starts, so repeats never overlap and each sample is device time;
on the CPU each repeat is bracketed by `time.perf_counter`. The
percentiles interpolate linearly between order statistics (numpy's default), so a handful of
repeats still gives a p20 <= median <= p80 that moves smoothly with the data.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

CUDA_EVENTS = "cuda-events"
PERF_COUNTER = "perf_counter"


@dataclass(frozen=True)
class TimingStats:
    """Summary of `repeats` timed calls (seconds) after `warmup` untimed ones."""

    median_s: float
    p20_s: float
    p80_s: float
    mean_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int
    timer: str
    samples_s: tuple[float, ...]

    def to_dict(self) -> dict:
        """Milliseconds, the unit of every table and file."""
        return dict(median_ms=1e3 * self.median_s, p20_ms=1e3 * self.p20_s, p80_ms=1e3 * self.p80_s,
                    mean_ms=1e3 * self.mean_s, min_ms=1e3 * self.min_s, max_ms=1e3 * self.max_s,
                    repeats=self.repeats, warmup=self.warmup, timer=self.timer)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100), linear between closest ranks (numpy's "linear")."""
    if not samples:
        raise ValueError("samples must be non-empty")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples_s: Sequence[float], warmup: int = 0, timer: str = PERF_COUNTER) -> TimingStats:
    """TimingStats of measured durations in seconds (all must be finite and >= 0)."""
    samples = tuple(float(s) for s in samples_s)
    if not samples:
        raise ValueError("samples_s must hold at least one duration")
    if any(not math.isfinite(s) or s < 0 for s in samples):
        raise ValueError(f"samples_s must be finite and >= 0, got {samples}")
    return TimingStats(
        median_s=percentile(samples, 50), p20_s=percentile(samples, 20), p80_s=percentile(samples, 80),
        mean_s=sum(samples) / len(samples), min_s=min(samples), max_s=max(samples),
        repeats=len(samples), warmup=warmup, timer=timer, samples_s=samples,
    )


def _check_counts(repeats: int, warmup: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def measure(fn: Callable[[], Any], device: torch.device | str, repeats: int, warmup: int
            ) -> tuple[TimingStats, Any]:
    """Call `fn()` `warmup` times untimed, then `repeats` times timed.

    Returns the stats and the value of the last call, so accuracy can be checked on the very
    output that was timed without paying for one more (possibly long) forward.
    """
    _check_counts(repeats, warmup)
    device = torch.device(device)
    out = None
    for _ in range(warmup):
        out = fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return summarize(samples, warmup, CUDA_EVENTS), out
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        samples.append(time.perf_counter() - start)
    return summarize(samples, warmup, PERF_COUNTER), out
