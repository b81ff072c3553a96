"""The GPU check: one command on a lent GPU, one report (Markdown + JSON beside it).

1. The GPU-only tests (`pytest -m "gpu or multigpu"` over tests/): compiled kernels, attention
   backends, graphs, NCCL when there is more than one GPU.
2. Full-size benchmarks with random weights at 1.3B 480p shapes (832x480, 81 frames: 32,760
   tokens, batch 2): the kernels, attention backends, one DiT forward and the VAE.
On a machine without CUDA, or with `dry_run`, the same flow runs at reduced sizes (the tiny
preset) so CI exercises it in well under a minute. The time budget on an H100 is 8 minutes.
"""
from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wan_engine.configs import get_preset
from wan_engine.device import resolve_device, resolve_dtype

from .ceilings import measure_ceilings
from .cli import print_results, run_suites, settings_of
from .report import REPO_ROOT, SCHEMA, environment, markdown_report, write_json
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
    vae_repeats: int          # a full-size decode takes seconds: fewer repeats
    tests_timeout_s: float


FULL = CheckPlan("t2v-1.3B", (832, 480), 81, repeats=3, warmup=1, vae_repeats=2, tests_timeout_s=240)
DRY = CheckPlan("tiny", (32, 32), 5, repeats=2, warmup=1, vae_repeats=1, tests_timeout_s=120)


def run_gpu_tests(tests: str, timeout_s: float) -> dict:
    """`pytest -m "gpu or multigpu" <tests>` in a subprocess; exit 5 (nothing selected) counts as ok."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu or multigpu", tests, "-q", "-p", "no:cacheprovider", "-rs"]
    start = time.perf_counter()
    if not (REPO_ROOT / tests).exists() and not Path(tests).exists():
        return dict(command=shlex.join(cmd), returncode=None, ok=False, seconds=0.0,
                    summary=f"test folder {tests!r} not found", tail="")
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        returncode = None
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    if returncode is None:
        summary = f"timed out after {timeout_s:.0f} s; last line: {summary}"
    return dict(command=shlex.join(cmd), returncode=returncode, ok=returncode in (0, 5),
                seconds=time.perf_counter() - start, summary=summary, tail="\n".join(lines[-40:]))


def run_gpu_check(out_dir: Path | str, *, dry_run: bool = False, device=None, tests: str = "tests",
                  command: str = "python -m wan_engine.bench --gpu-check", log=print) -> dict:
    """Run the check; returns {"markdown": path, "json": path, "failed": bool, "report": dict}."""
    start = time.perf_counter()
    device = resolve_device(device)
    reduced = dry_run or device.type != "cuda"
    plan = DRY if reduced else FULL
    mode = "dry run (reduced sizes)" if reduced else "full size"
    log(f"[gpu-check] {mode} on {device}")

    log(f"[gpu-check] GPU-only tests: pytest -m 'gpu or multigpu' {tests}")
    test_report = run_gpu_tests(tests, plan.tests_timeout_s)
    log(f"[gpu-check] tests: {test_report['summary']}")

    model = get_preset(plan.preset)
    ctx = BenchContext(preset=plan.preset, model=model, width=plan.size[0], height=plan.size[1],
                       frames=plan.frames, device=device, dtype=resolve_dtype(None, device),
                       repeats=plan.repeats, warmup=plan.warmup, batch=2, compile=False,
                       ceilings=measure_ceilings(device))
    suites = {}
    for name in SUITES:
        suite_ctx = ctx.replace(repeats=plan.vae_repeats) if name == "vae" else ctx
        suites |= run_suites([name], suite_ctx, log=log)
    print_results(suites, log=log)

    seconds = time.perf_counter() - start
    failed = not test_report["ok"] or any(s.get("failed") for s in suites.values())
    verdict = "FAILED" if failed else "passed"
    budget = f"{seconds:.0f} s of the {BUDGET_S} s budget" if not reduced else f"{seconds:.0f} s"
    report = dict(
        schema=SCHEMA, environment=environment(device, command), settings=settings_of(ctx) | {"mode": mode},
        ceilings=ctx.ceilings.to_dict(), suites=suites,
        extra={"GPU check": f"{verdict}: {mode}, {budget}",
               "GPU-only tests": f"$ {test_report['command']}\nexit {test_report['returncode']} "
                                 f"in {test_report['seconds']:.1f} s\n{test_report['tail']}"},
        tests=test_report, seconds=seconds, failed=failed,
    )
    out_dir = Path(out_dir)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    stem = f"gpu-check-{'dry-' if reduced else ''}{stamp}"
    json_path = write_json(out_dir / f"{stem}.json", report)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown_report(report, None, title=f"wan_engine GPU check ({mode})"))
    log(f"[gpu-check] {verdict} in {seconds:.0f} s")
    return dict(markdown=md_path, json=json_path, failed=failed, report=report)
