"""The GPU check must fail, in its report and its exit status, for each thing that can go wrong:
an implementation that crashes, one that is inaccurate, a GPU-only test that fails. Shown on the
CPU with test doubles passed in through the check's own seams (`extra` implementations, the
`tests` folder), at the dry run's reduced sizes.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from wan_engine.bench import bounds, cli
from wan_engine.bench.gpu_check import run_gpu_check
from wan_engine.bench.gpu_tests import nccl_line, run_gpu_tests
from wan_engine.bench.report import failures
from wan_engine.bench.suites.common import REFERENCE_ATTENTION
from wan_engine.bench.suites.dit import Candidate, Prepared

GPU_TESTS = """
import pytest

@pytest.mark.gpu
def test_gpu_passes():
    assert True

@pytest.mark.gpu
def test_gpu_fails():
    assert 1 == 2, "a GPU-only test that fails"

@pytest.mark.multigpu
def test_nccl_layout():
    assert True

def test_not_selected():
    assert False, "deselected by -m 'gpu or multigpu'"
"""
NOISE = 1e-2  # relative: far outside the fp32 bound (~2e-6), about the size of a real bug


def _test_folder(tmp_path, body: str):
    # Outside tests/, so tests/conftest.py (which skips gpu marks on a CPU) does not apply: the
    # GPU-marked doubles run here as they would on a GPU.
    folder = tmp_path / "gpu_tests"
    folder.mkdir()
    (folder / "test_doubles.py").write_text(body)
    return str(folder)


def _crashing() -> Candidate:
    def build(setup):
        raise RuntimeError("injected crash while building")

    return Candidate("crashes", torch.float32, build)


def _inaccurate() -> Candidate:
    def build(setup):
        model = setup.reference(torch.float32)
        noise_gen = torch.Generator().manual_seed(1)

        def call():
            out = model(**setup.inputs)
            return out + NOISE * out.std() * torch.randn(out.shape, generator=noise_gen).to(out.device)

        return Prepared(call, REFERENCE_ATTENTION)

    return Candidate("inaccurate", torch.float32, build)


def test_check_fails_for_a_crashing_and_an_inaccurate_implementation(tmp_path):
    tests = _test_folder(tmp_path, "def test_no_gpu_tests_here():\n    pass\n")
    result = run_gpu_check(tmp_path / "out", dry_run=True, device="cpu", tests=tests, suites=("dit",),
                           extra={"dit": [_crashing(), _inaccurate()]}, log=lambda *_: None)
    assert result["failed"] and result["report"]["complete"]
    rows = {r["impl"]: r for r in result["report"]["suites"]["dit"]["rows"]}
    assert rows["crashes"]["verdict"] == bounds.FAIL and rows["crashes"]["median_ms"] is None
    assert rows["crashes"]["note"] == "crashed: RuntimeError: injected crash while building"
    bad = rows["inaccurate"]
    layers = result["report"]["settings"]["layers"]
    assert bad["verdict"] == bounds.FAIL and bad["acc_limit"] == bounds.optimized_bound("fp32", layers, 0.0, "").limit
    assert bad["rel_l2"] > 100 * bad["acc_limit"]
    # The built-in implementations still pass: only the injected ones fail.
    assert all(rows[impl]["verdict"] == bounds.PASS for impl in ("reference-bf16", "executor"))
    problems = result["report"]["failures"]
    assert len(problems) == 2 and "dit / dit forward / crashes (fp32): crashed: RuntimeError" in problems[0]
    assert "inaccurate (fp32): rel_l2" in problems[1] and "outside its bound" in problems[1]
    md = result["markdown"].read_text()
    assert md.startswith("# wan_engine GPU check (dry run (reduced sizes)): FAIL") and "## Verdict: FAIL" in md
    assert "| crashes | fp32 |" in md and "| FAIL |" in md
    # exit 5 (nothing selected) is not a failure: the verdict comes from the rows alone.
    assert result["report"]["tests"]["ok"] and result["report"]["tests"]["returncode"] == 5


def test_cli_exits_nonzero_when_a_gpu_test_fails(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--gpu-check", "--dry-run", "--device", "cpu", "--suite", "attention",
                   "--tests", _test_folder(tmp_path, GPU_TESTS), "--out", str(out)])
    assert rc == 1
    report = json.loads(next(out.glob("*.json")).read_text())
    tests = report["tests"]
    assert not tests["ok"] and tests["returncode"] == 1 and report["failed"]
    assert tests["counts"] == dict(passed=2, failed=1, error=0, skipped=0, deselected=1)
    outcome = {t["id"].split("::")[-1]: (t["outcome"], t["markers"]) for t in tests["tests"]}
    assert outcome == {"test_gpu_passes": ("passed", ["gpu"]), "test_gpu_fails": ("failed", ["gpu"]),
                       "test_nccl_layout": ("passed", ["multigpu"])}
    assert "NCCL tests (marker multigpu) ran: 1 (1 passed" in tests["nccl"]
    assert set(report["suites"]) == {"attention"}  # --suite: only what was asked, and the report says so
    md = next(out.glob("*.md")).read_text()
    # The id's folder prefix depends on pytest's rootdir (where the clone and /tmp sit), not the check.
    assert "## Verdict: FAIL" in md and re.search(r"FAILED +\S*test_doubles\.py::test_gpu_fails \[gpu\] \(", md)
    assert "a GPU-only test that fails" in md and "suites attention" in md
    assert "[gpu-check] FAIL" in capsys.readouterr().out


def test_a_module_that_fails_to_import_fails_the_tests_but_the_others_still_run(tmp_path):
    """Without --continue-on-collection-errors one missing package on the GPU image would stop
    pytest before a single GPU test ran."""
    folder = _test_folder(tmp_path, "import pytest\n\n@pytest.mark.gpu\ndef test_gpu_passes():\n    pass\n")
    (tmp_path / "gpu_tests" / "test_needs_missing.py").write_text("import a_package_the_image_lacks\n")
    report = run_gpu_tests(folder, timeout_s=120, cwd=tmp_path, gpus=0)
    assert not report["ok"] and report["counts"]["passed"] == 1 and report["counts"]["error"] == 1, report
    assert any(t["outcome"] == "error" and "test_needs_missing" in t["id"] for t in report["tests"]), report["tests"]


def test_a_check_cut_off_midway_leaves_a_report_marked_incomplete(tmp_path):
    """The device tool kills a command at its time limit: the parts that finished are on disk,
    and the report says it is incomplete rather than passing."""
    class CutOff(Exception):
        pass

    def log(line: str) -> None:
        if line.startswith("[gpu-check] dit:"):  # the dit suite just finished; the vae suite would be next
            raise CutOff

    with pytest.raises(CutOff):
        run_gpu_check(tmp_path / "out", dry_run=True, device="cpu", suites=("attention", "dit", "vae"),
                      tests=_test_folder(tmp_path, "def test_no_gpu_tests_here():\n    pass\n"), log=log)
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert not report["complete"] and set(report["suites"]) == {"attention"} and report["tests"]["ok"]
    assert list(report["part_seconds"]) == ["tests", "setup", "attention"]
    md = next((tmp_path / "out").glob("*.md")).read_text()
    assert md.startswith("# wan_engine GPU check (dry run (reduced sizes)): INCOMPLETE") and "stopped after part attention" in md


def test_check_refuses_suites_it_does_not_run(tmp_path):
    with pytest.raises(ValueError, match="suites must be a non-empty subset of kernels, attention, dit, vae"):
        run_gpu_check(tmp_path, dry_run=True, device="cpu", suites=("e2e",))
    with pytest.raises(ValueError, match="takes no extra implementations"):
        run_gpu_check(tmp_path, dry_run=True, device="cpu", tests=_test_folder(tmp_path, ""), suites=("vae",),
                      extra={"vae": [_crashing()]}, log=lambda *_: None)


def test_nccl_line_says_whether_the_multigpu_tests_ran():
    def case(outcome, markers=("multigpu",)):
        return dict(id="t", outcome=outcome, message="", markers=list(markers), seconds=0.0)

    assert nccl_line([case("skipped"), case("passed", ("gpu",))], 1) == \
        "1 GPU(s) visible; NCCL tests (marker multigpu) did not run (needs >= 2 GPUs, 1 skipped)"
    assert nccl_line([case("passed"), case("failed"), case("skipped")], 4) == \
        "4 GPU(s) visible; NCCL tests (marker multigpu) ran: 2 (1 passed, 1 failed or errored, 1 skipped)"
    assert "none collected" in nccl_line([], 2)


def test_failures_name_each_crash_and_bound_and_a_raised_suite():
    over = dict(case="c", impl="fast", dtype="bf16", verdict=bounds.FAIL, rel_l2=0.5, **{
        k: v for k, v in bounds.kernel_bound("bf16").fields({"rel_l2": 0.5}).items() if k != "verdict"})
    crashed = dict(case="c", impl="boom", dtype="fp32", verdict=bounds.FAIL, note="crashed: ValueError: x")
    fine = dict(case="c", impl="ok", dtype="fp32", verdict=bounds.PASS)
    suites = {"kernels": dict(rows=[fine, over, crashed], notes=[]),
              "dit": dict(rows=[], notes=["dit: suite failed: KeyError: 'w'"], failed=True)}
    assert failures(suites) == [
        "kernels / c / fast (bf16): rel_l2 0.5 outside its bound (<= 0.00781: one ulp per element: "
        "2 u(bf16) + 16 u(fp32) = 0.00781)",
        "kernels / c / boom (fp32): crashed: ValueError: x",
        "dit: the suite raised (dit: suite failed: KeyError: 'w')",
    ]
    assert failures({"kernels": dict(rows=[fine], notes=[])}) == []
