"""The GPU check's test part: `pytest -m "gpu or multigpu" <folder>` in a subprocess, read back
from its JUnit XML (every test id with its outcome and markers, via bench/pytest_plugin.py).

ok is False when pytest exits with anything but 0 or 5 (5: no test selected), when it runs past
its timeout (its whole process group is killed: NCCL ranks included), or when any test failed
or errored.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SELECTION = "gpu or multigpu or trt"  # trt tests skip themselves where TensorRT is absent
PLUGIN = "wan_engine.bench.pytest_plugin"
NO_TESTS_SELECTED = 5  # pytest's exit code when nothing was collected or everything deselected


def pytest_command(tests: str, junit: str | None = None) -> list[str]:
    """One module that fails to import must not stop the rest (`--continue-on-collection-errors`;
    its error still fails the check). pytest.ini's `--timeout` needs pytest-timeout: without the
    plugin the ini options are replaced, else pytest would refuse to start (the check has its own
    timeout). -P (Python 3.11+) keeps the repository root off sys.path (see scripts/test.sh)."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    cmd = [sys.executable, *safe_path, "-m", "pytest", "-m", SELECTION, tests, "-q", "-rA", "-p", "no:cacheprovider",
           "-p", PLUGIN, "--continue-on-collection-errors"]
    if importlib.util.find_spec("pytest_timeout") is None:
        cmd += ["-o", "addopts=-ra"]
    return cmd + ([f"--junitxml={junit}"] if junit else [])


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag, outcome in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
        child = case.find(tag)
        if child is not None:
            message = " ".join((child.get("message") or child.text or "").split())
            return outcome, message[:200]
    return "passed", ""


def parse_junit(path: Path) -> list[dict]:
    """[{"id", "outcome" (passed|failed|error|skipped), "message", "markers", "seconds"}] per test."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome, message = _outcome(case)
        fallback = "::".join(part for part in (case.get("classname"), case.get("name")) if part)
        tests.append(dict(id=props.get("nodeid") or fallback, outcome=outcome, message=message,
                          markers=[m for m in (props.get("markers") or "").split(",") if m],
                          seconds=float(case.get("time") or 0.0)))
    return tests


def _run(cmd: list[str], cwd: Path, timeout_s: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, stdout+stderr). The child leads its own process group, so a
    timeout kills everything it started (spawned NCCL ranks too), not just pytest."""
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout_s)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return None, output or ""


def run_gpu_tests(tests: str, timeout_s: float, cwd: Path, gpus: int) -> dict:
    """Run the GPU-only tests of folder `tests` (relative to `cwd` or absolute); a JSON-ready
    summary: command, exit code, ok, seconds, counts, every test's outcome, NCCL tests."""
    display = shlex.join(pytest_command(tests, "<temp>/junit.xml"))
    if not (cwd / tests).exists():
        return dict(command=display, returncode=None, ok=False, seconds=0.0, summary=f"test folder {tests!r} not found",
                    counts={}, tests=[], tail="", nccl=nccl_line([], gpus))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        returncode, output = _run(pytest_command(tests, str(junit)), cwd, timeout_s)
        cases = parse_junit(junit) if junit.exists() and junit.stat().st_size else []
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    if returncode is None:
        summary = f"timed out after {timeout_s:.0f} s (process group killed); last line: {summary}"
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    deselected = re.search(r"(\d+) deselected", summary)
    counts["deselected"] = int(deselected.group(1)) if deselected else 0
    ok = returncode in (0, NO_TESTS_SELECTED) and counts["failed"] == 0 and counts["error"] == 0
    return dict(command=display, returncode=returncode, ok=ok, seconds=time.perf_counter() - start,
                summary=summary, counts=counts, tests=cases, tail="\n".join(lines[-30:]), nccl=nccl_line(cases, gpus))


def nccl_line(cases: list[dict], gpus: int) -> str:
    """Whether the NCCL (`multigpu`) tests ran, and how they ended."""
    multi = [c for c in cases if "multigpu" in c["markers"]]
    ran = [c for c in multi if c["outcome"] != "skipped"]
    if not ran:
        why = "needs >= 2 GPUs" if gpus < 2 else "none collected" if not multi else "all skipped"
        return f"{gpus} GPU(s) visible; NCCL tests (marker multigpu) did not run ({why}, {len(multi)} skipped)"
    passed = sum(c["outcome"] == "passed" for c in ran)
    return f"{gpus} GPU(s) visible; NCCL tests (marker multigpu) ran: {len(ran)} ({passed} passed, " \
           f"{len(ran) - passed} failed or errored, {len(multi) - len(ran)} skipped)"


def describe(report: dict) -> str:
    """The test part as text: command, exit code, counts, NCCL line, then every test id with its
    outcome (skips with their reason, failures with their message)."""
    counts = report.get("counts") or {}
    head = [f"$ {report['command']}",
            f"exit {report['returncode']} in {report['seconds']:.1f} s: {'ok' if report['ok'] else 'FAIL'}",
            "counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "counts: none",
            report["nccl"], f"pytest: {report['summary']}", ""]
    body = []
    for case in report.get("tests", []):
        extra = f" ({case['message']})" if case["message"] and case["outcome"] != "passed" else ""
        marks = f" [{','.join(case['markers'])}]" if case["markers"] else ""
        body.append(f"{case['outcome'].upper():8s} {case['id']}{marks}{extra}")
    if not report.get("tests") and report.get("tail"):
        body = ["(no JUnit XML; last lines of the output)", report["tail"]]
    return "\n".join(head + body)
