"""The GPU check: one command on a lent GPU, one report (Markdown + JSON beside it).

What it runs, in order, each part timed against its planned share of the 8-minute budget
(PLAN_FULL; printed as it goes and tabled in the report):

1. tests: `pytest -m "gpu or multigpu or trt" tests/` in a subprocess (bench/gpu_tests.py): every test
   marked `gpu` (among them the Triton kernels compiled for the card, every attention backend
   that resolves and the auto probe, the bf16 executor eager and compiled) and, with more than
   one visible GPU, the NCCL tests marked `multigpu` (tests/parallel/test_nccl_parallel.py:
   Ulysses, ring and CFG layouts against one process). The report lists every test id with its
   outcome, the counts, the GPU count and whether the NCCL tests ran.
2. setup: CUDA start-up and the matmul/copy ceilings (bench/ceilings.py).
3. the `kernels`, `attention`, `dit` and `vae` suites at 1.3B 480p shapes (832x480, 81 frames:
   32,760 tokens, batch 2, bf16, seeded random weights), every row judged against its accuracy
   bound (bench/bounds.py).

The check FAILs (report verdict FAIL, exit status 1) when a test fails or errors (pytest exit
other than 0 or 5, or its timeout), a suite raises, an implementation crashes, or a row is
outside its bound. On a machine without CUDA, or with `dry_run`, the same flow runs at the tiny
preset (no budget applies).
"""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from wan_engine.configs import get_preset
from wan_engine.device import resolve_device, resolve_dtype

from .ceilings import measure_ceilings
from .gpu_tests import describe as describe_tests
from .gpu_tests import SELECTION, run_gpu_tests
from .report import REPO_ROOT, SCHEMA, environment, failures, markdown_report, write_json
from .run import print_results, run_suites, settings_of
from .suites import check_extra
from .suites.common import BenchContext

BUDGET_S = 8 * 60
SUITES = ("kernels", "attention", "dit", "vae")


@dataclass(frozen=True)
class CheckPlan:
    preset: str
    size: tuple[int, int]
    frames: int
    repeats: int
    warmup: int
    vae_repeats: int          # a full-size fp32 decode takes seconds: fewer repeats
    tests_timeout_s: float
    # Planned seconds per part (tests, setup, then each suite); None: no budget (the dry run).
    planned_s: Mapping[str, float] | None = None


# Estimates for an H100/H200 (none measured yet: the first run's table replaces them):
# tests: ~20 s start-up and collection, ~60 s Triton compiles for 62 kernel cases, two
# torch.compile builds of a 2-layer executor, ~60 small attention cases. dit: an fp32 oracle
# (~566 TFLOP without TF32 and fp32 attention, ~25 s), 4 bf16 forwards each of the reference and
# the executor, weights drawn on the CPU. vae: 3 fp32 decodes (276 TFLOP) and encodes (164 TFLOP)
# for the oracle, 2 of each in bf16; then the decode paths, one warm-up and one timed call each:
# static, static with CUDA graphs and 2x2 tiles at 480p and at 720p (~55 s), and the static loop
# with each VAE speed lever on 21 frames (~10 s); the executor+graphs DiT row adds ~5 s to dit. The
# planned parts sum to 475 s of the 480 s budget: tight, and all of it estimated; the first GPU
# run's table says what to cut.
PLAN_FULL = CheckPlan("t2v-1.3B", (832, 480), 81, repeats=3, warmup=1, vae_repeats=1, tests_timeout_s=240,
                      planned_s=dict(tests=180, setup=15, kernels=25, attention=25, dit=95, vae=135))
# Timings on the CPU only prove the plumbing: one call each, no warm-up.
PLAN_DRY = CheckPlan("tiny", (32, 32), 5, repeats=1, warmup=0, vae_repeats=1, tests_timeout_s=120)


def budget_table(seconds: Mapping[str, float], plan: CheckPlan, total_s: float) -> str:
    """Planned vs actual seconds per part and in total, against BUDGET_S when a plan applies."""
    planned = plan.planned_s
    lines = [f"{'part':<10} {'planned s':>10} {'actual s':>9}"]
    for part, actual in seconds.items():
        plan_s = f"{planned[part]:.0f}" if planned and part in planned else "-"
        over = "  over plan" if planned and part in planned and actual > planned[part] else ""
        lines.append(f"{part:<10} {plan_s:>10} {actual:>9.1f}{over}")
    if planned:
        verdict = "within" if total_s <= BUDGET_S else "OVER"
        lines.append(f"{'total':<10} {sum(planned.values()):>10.0f} {total_s:>9.1f}  {verdict} the "
                     f"{BUDGET_S} s budget")
    else:
        lines.append(f"{'total':<10} {'-':>10} {total_s:>9.1f}  (dry run: no budget)")
    return "\n".join(lines)


def run_gpu_check(out_dir: Path | str, *, dry_run: bool = False, device=None, tests: str = "tests",
                  suites: Sequence[str] = SUITES, extra: Mapping[str, Sequence] | None = None,
                  command: str = "python -m wan_engine.bench --gpu-check",
                  log: Callable[[str], None] = print) -> dict:
    """Run the check; returns {"markdown": path, "json": path, "failed": bool, "report": dict}.

    tests: the folder whose `gpu`/`multigpu` tests run. suites: a subset of SUITES to run
    (default all). extra: implementations added to a suite ({"dit": [bench.suites.dit.Candidate]}),
    judged like the built-in ones.
    """
    start = time.perf_counter()
    suites = tuple(suites)
    if not suites or set(suites) - set(SUITES):
        raise ValueError(f"suites must be a non-empty subset of {', '.join(SUITES)}; got {', '.join(suites)}")
    if extra:
        unknown = set(extra) - set(suites)
        if unknown:
            raise ValueError(f"extra implementations for suites that do not run: {sorted(unknown)}")
        for name in extra:
            check_extra(name)
    device = resolve_device(device)
    reduced = dry_run or device.type != "cuda"
    plan = PLAN_DRY if reduced else PLAN_FULL
    mode = "dry run (reduced sizes)" if reduced else "full size"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seconds: dict[str, float] = {}

    def part_done(part: str, began: float) -> None:
        seconds[part] = time.perf_counter() - began
        planned = f" (planned {plan.planned_s[part]:.0f} s)" if plan.planned_s else ""
        log(f"[gpu-check] {part}: {seconds[part]:.1f} s{planned}; {time.perf_counter() - start:.0f} s so far")

    out_dir = Path(out_dir)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    stem = f"gpu-check-{'dry-' if reduced else ''}{stamp}"
    ctx: BenchContext | None = None
    test_report: dict | None = None
    results: dict = {}

    def write_report(finished: bool) -> tuple[dict, list[str], str]:
        """The report of what has run so far, written after every part: if the run is cut off (the
        device tool's per-command limit) the files show each finished part, marked INCOMPLETE."""
        problems = ([] if test_report is None or test_report["ok"] else
                    [f"GPU-only tests: {test_report['summary']}"]) + failures(results)
        verdict = ("FAIL" if problems else "PASS") if finished else "INCOMPLETE"
        ran = ", ".join(["GPU-only tests"] + (["setup", "suites " + ", ".join(results)] if ctx else []))
        total = time.perf_counter() - start
        extra_sections = {"GPU check": f"{verdict}: {mode}; ran: {ran}" + "".join(f"\n- {p}" for p in problems)
                          + ("" if finished else f"\n- stopped after part {list(seconds)[-1]}: this file is "
                                                  f"rewritten when the check finishes"),
                          "Time per part": budget_table(seconds, plan, total)}
        if test_report is not None:
            extra_sections["GPU-only tests"] = describe_tests(test_report)
        report = dict(
            schema=SCHEMA, environment=environment(device, command),
            settings=(settings_of(ctx) if ctx else {}) | {"mode": mode},
            ceilings=ctx.ceilings.to_dict() if ctx else {}, suites=results, extra=extra_sections,
            tests=test_report, seconds=total, part_seconds=dict(seconds), failed=bool(problems),
            failures=problems, complete=finished,
        )
        write_json(out_dir / f"{stem}.json", report)
        (out_dir / f"{stem}.md").write_text(markdown_report(report, None, title=f"wan_engine GPU check ({mode}): {verdict}"))
        return report, problems, verdict

    log(f"[gpu-check] {mode} on {device}, {gpus} GPU(s) visible; parts: tests, setup, {', '.join(suites)}")
    # The tests first, while this process holds no CUDA context or cached memory: they get the
    # whole card (and every card, for the NCCL ranks).
    began = time.perf_counter()
    log(f"[gpu-check] GPU-only tests: pytest -m '{SELECTION}' {tests}")
    test_report = run_gpu_tests(tests, plan.tests_timeout_s, REPO_ROOT, gpus)
    log(f"[gpu-check] tests: {'ok' if test_report['ok'] else 'FAIL'}: {test_report['summary']}; {test_report['nccl']}")
    part_done("tests", began)
    write_report(finished=False)

    began = time.perf_counter()
    model = get_preset(plan.preset)
    ctx = BenchContext(preset=plan.preset, model=model, width=plan.size[0], height=plan.size[1],
                       frames=plan.frames, device=device, dtype=resolve_dtype(None, device),
                       repeats=plan.repeats, warmup=plan.warmup, batch=2, compile=False,
                       ceilings=measure_ceilings(device))
    part_done("setup", began)

    for name in suites:
        began = time.perf_counter()
        suite_ctx = ctx.replace(repeats=plan.vae_repeats) if name == "vae" else ctx
        suite_extra = {name: extra[name]} if extra and name in extra else None
        results |= run_suites([name], suite_ctx, log=log, extra=suite_extra)
        part_done(name, began)
        write_report(finished=False)
    print_results(results, log=log)

    report, problems, verdict = write_report(finished=True)
    failed = report["failed"]
    total_s = report["seconds"]
    budget = budget_table(seconds, plan, total_s)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    log(f"[gpu-check] time per part:\n{budget}")
    log(f"[gpu-check] {verdict} in {total_s:.0f} s" + "".join(f"\n  {p}" for p in problems))
    return dict(markdown=md_path, json=json_path, failed=failed, report=report)
