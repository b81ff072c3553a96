"""Running suites and summarizing them: shared by the bench CLI (bench/cli.py) and the GPU check
(bench/gpu_check.py), which both import this module and never each other.

A suite entry is {"rows", "notes", "text", "telemetry", "seconds"} plus "failed": True when the
suite itself raised. A run fails when a suite raised or any row's verdict is FAIL (a crashed
implementation, or an accuracy over its bound: bench/bounds.py).
"""
from __future__ import annotations

import time
import traceback
from typing import Callable, Mapping, Sequence

from .report import failures


def run_suites(names: list[str], ctx, log: Callable[[str], None] = print,
               extra: Mapping[str, Sequence] | None = None) -> dict:
    """{suite: entry} for each name in order; a suite that raises is recorded as failed with its
    error (the others still run). `extra` maps a suite name to implementations it adds after its
    built-in ones (see bench.suites.run_suite)."""
    from .suites import check_extra, run_suite
    from .telemetry import GpuTelemetry

    extra = {name: tuple(impls) for name, impls in (extra or {}).items() if impls}
    unknown = set(extra) - set(names)
    if unknown:
        raise ValueError(f"extra implementations for suites that do not run: {sorted(unknown)}")
    for name in extra:  # refused before anything runs, not as a failed suite midway
        check_extra(name)
    suites = {}
    for name in names:
        log(f"[bench] {name} ...")
        start = time.perf_counter()
        with GpuTelemetry(ctx.device) as telemetry:
            try:
                result = run_suite(name, ctx, extra.get(name, ()))
                entry = dict(rows=result.rows, notes=result.notes, text=result.text)
            except Exception as err:  # noqa: BLE001 - one broken suite must not lose the others
                tail = traceback.format_exc().strip().splitlines()[-3:]
                entry = dict(rows=[], notes=[f"{name}: suite failed: {type(err).__name__}: {err}", *tail],
                             text="", failed=True)
        entry["telemetry"] = telemetry.summary().to_dict()
        entry["seconds"] = time.perf_counter() - start
        suites[name] = entry
        log(f"[bench] {name} done in {entry['seconds']:.1f} s")
    return suites


def settings_of(ctx) -> dict:
    from .suites.common import dtype_name

    return dict(model=ctx.preset, size=f"{ctx.width}x{ctx.height}", frames=ctx.frames, device=str(ctx.device),
                dtype=dtype_name(ctx.dtype), batch=ctx.batch, layers=ctx.layers or ctx.model.dit.num_layers,
                repeats=ctx.repeats, warmup=ctx.warmup, steps=ctx.steps or ctx.model.sample.steps,
                compile=ctx.compile, seed=ctx.seed)


def print_results(suites: dict, log: Callable[[str], None] = print) -> None:
    from .report import format_table, telemetry_line

    for name, suite in suites.items():
        log(f"\n== {name} ({suite['seconds']:.1f} s) ==")
        if suite.get("text"):
            log(suite["text"])
        if suite["rows"] and name != "roofline":
            log(format_table(suite["rows"]))
        for note in suite["notes"]:
            log(f"  note: {note}")
        if (suite.get("telemetry") or {}).get("available"):
            log(f"  {telemetry_line(suite['telemetry'])}")
    problems = failures(suites)
    if problems:
        log("\nFAIL:\n" + "\n".join(f"  {p}" for p in problems))
