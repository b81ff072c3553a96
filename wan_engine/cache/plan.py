"""From a request's `CacheConfig` to its `StepCache`, and the report of what it computed."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .calibration import Calibration
from .config import CacheConfig
from .schedules import BRANCHES, magcache_schedule, teacache_schedule
from .step_cache import StepCache


@torch.no_grad()
def timestep_signal(dit, timesteps: torch.Tensor, ret_steps: bool) -> list[float]:
    """TeaCache's input signal per step: the relative L1 change of e (or e0 with ret_steps) from
    the previous step, as the official computes it (mean |cur - prev| / mean |prev|, fp32);
    entry 0 has no predecessor and is 0. One host read for the whole schedule."""
    e, e0 = dit.time_embedding(timesteps.reshape(-1))
    signal = (e0 if ret_steps else e).float()
    change = (signal[1:] - signal[:-1]).flatten(1).abs().mean(1) / signal[:-1].flatten(1).abs().mean(1)
    return [0.0] + change.tolist()


def check_cache_runs_on(config: CacheConfig, dit) -> None:
    """Refuse, before any compute, a cache the DiT cannot run: FBCache on an export without the
    split step (`has_first_block_steps` False: an export made before it; the executor always has it),
    TeaCache on one without the time-embedding graph (`has_time_embedding` False, likewise)."""
    if config.policy == "fbcache" and not getattr(dit, "has_first_block_steps", True):
        raise ValueError("this DiT export has no first-block graphs, which the fbcache cache runs: it predates "
                         "them; export it again (or use teacache or magcache)")
    if config.policy == "teacache" and not getattr(dit, "has_time_embedding", True):
        raise ValueError("this DiT export has no time-embedding graph, which teacache measures its signal on: it "
                         "predates it; export it again (or use magcache or fbcache)")


def check_cache_for_experts(cache: CacheConfig | None) -> None:
    """A two-expert model caches with MagCache (its published Wan2.2 ratios span both experts) or
    FBCache; TeaCache's polynomial maps one DiT's input change to its output change, and none is
    published or fitted per expert. (The cache keeps each DiT's residuals apart, so the low-noise
    expert computes its first step.)"""
    if cache is not None and cache.policy == "teacache":
        raise ValueError("cache: teacache's polynomial belongs to one DiT, and a two-expert model (Wan2.2 A14B) has "
                         "none per expert; use magcache or fbcache")


def build_step_cache(config: CacheConfig, calibration: Calibration | None, dit, timesteps: torch.Tensor,
                     sp_group=None, graphs=None, *, switch: int | None = None, cache_high_noise: bool = True,
                     image: bool = False) -> StepCache:
    """The request's cache: TeaCache and MagCache get their whole schedule here, before step 0.
    switch: a two-expert model's first low-noise step (None: one DiT); cache_high_noise False keeps
    every high-noise step computed (MagCache's rule for I2V-A14B); image: the request has an image
    condition (a calibration may hold MagCache ratios for those apart)."""
    config = config.with_default_threshold(calibration.thresholds if calibration is not None else None)
    steps = int(timesteps.numel())
    if config.policy == "fbcache":
        return StepCache(steps, first_block_threshold=config.threshold, sp_group=sp_group, graphs=graphs)
    if config.policy == "teacache":
        schedule = teacache_schedule(timestep_signal(dit, timesteps, config.ret_steps),
                                     calibration.teacache_coefficients(config.ret_steps), config.threshold,
                                     config.ret_steps)
    else:
        schedule = magcache_schedule(calibration.magcache_ratios(image), steps, config.threshold, config.max_skips,
                                     config.retention, switch, cache_high_noise)
    return StepCache(steps, schedule=schedule, sp_group=sp_group, graphs=graphs)


@dataclass(frozen=True)
class CacheReport:
    """What a cached request computed: per branch (0 cond, 1 uncond; the cond branch alone for a
    request run without CFG) and step, True = the block stack ran, False = the cached residual was
    reused."""

    policy: str
    calibration: str | None
    computed: tuple[tuple[bool, ...], ...]

    @property
    def steps(self) -> int:
        return len(self.computed[0])

    def counts(self) -> tuple[int, ...]:
        return tuple(sum(branch) for branch in self.computed)

    def summary(self) -> str:
        """`computed C/N`, or per branch when they differ (a request without CFG: the cond branch's)."""
        counts = self.counts()
        if len(set(counts)) == 1:
            return f"computed {counts[0]}/{self.steps}" + ("" if len(counts) == BRANCHES else " (cond only, no CFG)")
        cond, uncond = counts
        return f"computed cond {cond}/{self.steps}, uncond {uncond}/{self.steps}"

    def schedule_text(self) -> str:
        """One character per step and branch (cond / uncond): C computed, r reused."""
        return " / ".join("".join("C" if c else "r" for c in branch) for branch in self.computed)

    def to_json(self) -> dict:
        return {"policy": self.policy, "calibration": self.calibration, "summary": self.summary(),
                "computed": [list(b) for b in self.computed]}


def cache_report(cache: StepCache, config: CacheConfig, calibration: Calibration | None, cfg_group=None,
                 image: bool = False, cfg: bool = True) -> CacheReport:
    """The report of a finished request (`image`: it had an image condition, so MagCache may have
    taken the calibration's image-request ratios; `cfg` False: it ran the cond branch alone, which
    is all the report holds). Under CFG parallelism a rank ran only its own branch; the decisions of
    both are joined over `cfg_group` (one small collective, after the loop)."""
    decisions = cache.decisions[:BRANCHES if cfg else 1]
    if any(d is None for branch in decisions for d in branch):
        if cfg_group is None:
            raise ValueError("the cache ran only some branches and no cfg group was given to join them")
        flags = torch.tensor([[-1 if d is None else int(d) for d in branch] for branch in decisions],
                             dtype=torch.int64, device=_group_device(cfg_group))
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=cfg_group)
        decisions = [[bool(v) for v in branch] for branch in flags.tolist()]
    used = None if not config.needs_calibration or calibration is None else calibration.source
    if used is not None and image and config.policy == "magcache" and calibration.magcache_image is not None:
        used += " (image-request ratios)"
    return CacheReport(config.describe(), used, tuple(tuple(bool(d) for d in branch) for branch in decisions))


def _group_device(group) -> torch.device:
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
