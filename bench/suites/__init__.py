"""The benchmark suites, one module each, every one exposing `run(ctx: BenchContext) -> SuiteResult`.

Modules are imported when their suite runs, so `--suite roofline` imports no model code and the
Triton kernels are imported only by the suites that use them.
"""
from __future__ import annotations

import importlib
import inspect

from .common import BenchContext, SuiteResult

# In the order `all` runs them: the analytic and micro-benchmarks first, the whole pipeline last.
SUITES = ("roofline", "kernels", "attention", "dit", "step", "vae", "parallel", "memory", "e2e", "adherence",
          "cache", "fp8")
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


def run_suite(name: str, ctx: BenchContext, extra=()) -> SuiteResult:
    """Run one suite. `extra`: implementations the suite adds after its own (only suites whose
    `run` takes `extra`, e.g. dit with `bench.suites.dit.Candidate`s)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    if not extra:
        return importlib.import_module(f"{__name__}.{name}").run(ctx)
    check_extra(name)
    return importlib.import_module(f"{__name__}.{name}").run(ctx, extra=tuple(extra))


def check_extra(name: str) -> None:
    """ValueError unless suite `name` takes extra implementations (its `run` has `extra`)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    if "extra" not in inspect.signature(importlib.import_module(f"{__name__}.{name}").run).parameters:
        raise ValueError(f"suite {name!r} takes no extra implementations")


__all__ = ["SUITES", "SUITE_CHOICES", "BenchContext", "SuiteResult", "check_extra", "expand", "run_suite"]
