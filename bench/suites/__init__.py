"""The benchmark suites, one module each, every one exposing `run(ctx: BenchContext) -> SuiteResult`.

Modules are imported when their suite runs, so `--suite roofline` imports no model code and the
Triton kernels are imported only by the suites that use them.
"""
from __future__ import annotations

import importlib

from .common import BenchContext, SuiteResult

# In the order `all` runs them: the analytic and micro-benchmarks first, the whole pipeline last.
SUITES = ("roofline", "kernels", "attention", "dit", "step", "vae", "parallel", "memory", "e2e")
SUITE_CHOICES = (*SUITES, "all")


def expand(names: list[str] | tuple[str, ...]) -> list[str]:
    """Suite names with "all" expanded, duplicates dropped, in the order given."""
    out: list[str] = []
    for name in names:
        if name not in SUITE_CHOICES:
            raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITE_CHOICES)}")
        for suite in SUITES if name == "all" else (name,):
            if suite not in out:
                out.append(suite)
    return out


def run_suite(name: str, ctx: BenchContext) -> SuiteResult:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(f"{__name__}.{name}").run(ctx)


__all__ = ["SUITES", "SUITE_CHOICES", "BenchContext", "SuiteResult", "expand", "run_suite"]
