"""Checkpoints, phase clocks and the learning-rate schedule shared by the `shapes` training phases."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

# ------------------------------------------------------------------------------------------------
# Checkpoints (plain tensors and numbers only: read back with weights_only=True)
# ------------------------------------------------------------------------------------------------

def _save(path: Path, state: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)  # never leave a half-written checkpoint under the real name


def _load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


class _Clock:
    """Budget and checkpoint timing of one phase, carried across resumes."""

    def __init__(self, budget_s: float, spent_s: float = 0.0):
        self.budget_s, self.spent_before, self.start = budget_s, spent_s, time.perf_counter()
        self.last_checkpoint = self.start

    @property
    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.start

    def expired(self) -> bool:
        return self.spent >= self.budget_s

    def total_steps(self, step: int, steps_this_run: int, cap: int | None) -> int:
        """The step count this phase will reach: the cap, or the budget at this run's pace."""
        if cap is not None:
            return cap
        elapsed = time.perf_counter() - self.start
        if steps_this_run < 10 or elapsed <= 0:
            return max(step + 1000, 2000)
        return step + int((self.budget_s - self.spent) * steps_this_run / elapsed)

    def checkpoint_due(self, every_s: float) -> bool:
        if time.perf_counter() - self.last_checkpoint >= every_s:
            self.last_checkpoint = time.perf_counter()
            return True
        return False


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak at step `total` (estimated from the
    budget and the pace, so the decay ends when the time does)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
