"""Step caching: reuse the DiT block stack's residual on steps where its input barely changed.

Policies (`CacheConfig`): TeaCache and MagCache, whose schedules are fixed before the first step,
and the first-block cache, which decides at run time. The runner owns the cache (`StepCache`);
the executor only exposes its forward in stages. Every policy is lossy and off by default.
"""
from .calibration import Calibration, published, resolve_calibration
from .config import POLICIES, CacheConfig
from .plan import (
    CacheReport, build_step_cache, cache_report, check_cache_for_experts, check_cache_runs_on, timestep_signal,
)
from .step_cache import StepCache

__all__ = ["POLICIES", "CacheConfig", "CacheReport", "Calibration", "StepCache", "build_step_cache",
           "cache_report", "check_cache_for_experts", "check_cache_runs_on", "published", "resolve_calibration",
           "timestep_signal"]
