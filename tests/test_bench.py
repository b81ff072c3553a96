"""The benchmark suite's building blocks: timing statistics, accuracy metrics (SSIM/PSNR against
hand computations and a brute-force oracle), telemetry degradation, ceilings, report writers, the
roofline CLI and the GPU check's CPU dry run.

Tolerances: metrics computed in float64 from exact inputs are compared to 1e-12 relative (a few
ulps of accumulated rounding); the separable-convolution SSIM against the per-window loop oracle
to 1e-10 (different summation orders over 121-tap windows of values up to 255^2).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time

import numpy as np
import pytest
import torch

from wan_engine.bench import accuracy, bounds, cli, report, run, timing
from wan_engine.bench.ceilings import MeasuredCeilings, measure_ceilings
from wan_engine.bench.gpu_check import SUITES as CHECK_SUITES
from wan_engine.bench.gpu_check import run_gpu_check
from wan_engine.bench.roofline import dit_forward_cost
from wan_engine.bench.suites import expand
from wan_engine.bench.suites.common import ROW_FIELDS, BenchContext, make_row
from wan_engine.bench.telemetry import GpuTelemetry, RssSampler
from wan_engine.configs import get_preset

C1 = (0.01 * 255) ** 2  # 6.5025
C2 = (0.03 * 255) ** 2  # 58.5225


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_percentile_matches_numpy_linear(n):
    samples = np.random.default_rng(n).exponential(size=n).tolist()
    for q in (0, 20, 50, 80, 100):
        assert timing.percentile(samples, q) == pytest.approx(np.percentile(samples, q), rel=1e-12)


def test_summarize_hand_values():
    stats = timing.summarize([5.0, 1.0, 4.0, 2.0, 3.0], warmup=2)
    # Sorted 1..5: position (n-1)*q = 0.8 -> 1.8; 2.0 -> 3; 3.2 -> 4.2.
    assert (stats.p20_s, stats.median_s, stats.p80_s) == pytest.approx((1.8, 3.0, 4.2))
    assert (stats.min_s, stats.max_s, stats.mean_s, stats.repeats, stats.warmup) == (1.0, 5.0, 3.0, 5, 2)
    d = stats.to_dict()
    assert d["median_ms"] == pytest.approx(3000.0) and d["p20_ms"] == pytest.approx(1800.0)


def test_summarize_rejects_bad_samples():
    for bad in ([], [1.0, -1.0], [float("nan")]):
        with pytest.raises(ValueError, match="samples"):
            timing.summarize(bad)
    with pytest.raises(ValueError, match="q must be in"):
        timing.percentile([1.0], 101)


def test_measure_counts_calls_and_times_them():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)
        return len(calls)

    stats, last = timing.measure(work, "cpu", repeats=4, warmup=2)
    assert len(calls) == 6 and last == 6  # the value of the last (timed) call
    assert stats.repeats == 4 and stats.warmup == 2 and stats.timer == timing.PERF_COUNTER
    assert stats.min_s >= 0.002 and stats.p20_s <= stats.median_s <= stats.p80_s
    for repeats, warmup in ((0, 1), (2, -1), (True, 0)):
        with pytest.raises(ValueError, match="repeats|warmup"):
            timing.measure(work, "cpu", repeats=repeats, warmup=warmup)


# ------------------------------------------------------------------------------------------------
# Tensor metrics
# ------------------------------------------------------------------------------------------------

def test_tensor_metrics_hand_values():
    out, ref = torch.tensor([3.0, 5.0]), torch.tensor([3.0, 4.0])
    assert accuracy.max_abs_error(out, ref) == 1.0
    assert accuracy.relative_l2(out, ref) == pytest.approx(1 / 5, rel=1e-12)
    assert accuracy.cosine_similarity(out, ref) == pytest.approx((9 + 20) / (math.sqrt(34) * 5), rel=1e-12)
    assert accuracy.relative_l2(torch.zeros(3), torch.zeros(3)) == 0.0
    assert accuracy.relative_l2(torch.ones(3), torch.zeros(3)) == math.inf
    assert accuracy.cosine_similarity(-ref, ref) == pytest.approx(-1.0)


def test_tensor_metrics_match_numpy_on_random_bf16():
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 37, 5, generator=gen)
    out = (ref + 0.01 * torch.randn(2, 37, 5, generator=gen)).bfloat16()
    o, r = out.double().numpy().ravel(), ref.double().numpy().ravel()
    got = accuracy.compare_tensors(out, ref)
    assert got["max_abs"] == pytest.approx(np.abs(o - r).max(), rel=1e-12)
    assert got["rel_l2"] == pytest.approx(np.linalg.norm(o - r) / np.linalg.norm(r), rel=1e-12)
    assert got["cosine"] == pytest.approx(o @ r / (np.linalg.norm(o) * np.linalg.norm(r)), rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        accuracy.compare_tensors(out[:1], ref)


# ------------------------------------------------------------------------------------------------
# Video metrics
# ------------------------------------------------------------------------------------------------

def ssim_loop_oracle(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two 2-D planes, straight from Wang et al.: for every 11x11 window fully inside the
    image, Gaussian-weighted (sigma 1.5) means, variances and covariance, then the index."""
    taps = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(taps, taps) / np.outer(taps, taps).sum()
    x, y = x.astype(np.float64), y.astype(np.float64)
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + C1) * (2 * cov + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2)))
    return float(np.mean(values))


def noisy_pair(shape, seed, sigma=12.0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, size=shape).astype(np.float64)
    noisy = np.clip(clean + rng.normal(0, sigma, size=shape), 0, 255)
    return clean.astype(np.uint8), noisy.astype(np.uint8)


def test_ssim_identical_is_one_and_constant_images_match_the_formula():
    frames, _ = noisy_pair((2, 16, 20, 3), seed=0)
    assert accuracy.ssim(frames, frames) == pytest.approx(1.0, abs=1e-12)
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 110, np.uint8)
    # Zero variances: SSIM = (2ab + C1) / (a^2 + b^2 + C1) = 22006.5025 / 22106.5025.
    assert accuracy.ssim(a, b) == pytest.approx(22006.5025 / 22106.5025, rel=1e-12)


def test_ssim_noisy_plane_matches_the_window_loop():
    x, y = noisy_pair((17, 23), seed=1)
    expected = ssim_loop_oracle(x, y)
    assert 0.2 < expected < 0.99  # a case that is neither identical nor unrelated
    assert accuracy.ssim(x, y) == pytest.approx(expected, rel=1e-10)


def test_ssim_video_is_the_mean_over_frames_and_channels():
    x, y = noisy_pair((2, 12, 14, 3), seed=2, sigma=30.0)
    planes = [ssim_loop_oracle(x[f, :, :, c], y[f, :, :, c]) for f in range(2) for c in range(3)]
    assert accuracy.ssim(x, y) == pytest.approx(np.mean(planes), rel=1e-10)


def test_ssim_and_psnr_reject_bad_input():
    small = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="at least 11x11"):
        accuracy.ssim(small, small)
    with pytest.raises(ValueError, match="uint8"):
        accuracy.psnr(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="odd int"):
        accuracy.gaussian_window_1d(10)


def test_psnr_hand_values():
    zeros, ones = np.zeros((2, 8, 8, 3), np.uint8), np.ones((2, 8, 8, 3), np.uint8)
    assert accuracy.psnr(zeros, zeros) == math.inf
    assert accuracy.psnr(zeros, ones) == pytest.approx(20 * math.log10(255), rel=1e-12)  # MSE 1
    x, y = noisy_pair((3, 9, 9), seed=4)
    mse = np.mean((x.astype(float) - y.astype(float)) ** 2)
    assert accuracy.psnr(x, y) == pytest.approx(10 * math.log10(255 ** 2 / mse), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Telemetry and ceilings
# ------------------------------------------------------------------------------------------------

class FakeNvml:
    """The pynvml functions GpuTelemetry calls, with readings that change on every sample."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, fail_init=False):
        self.fail_init, self.reads, self.shut = fail_init, 0, False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("no uuid lookup")

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.reads += 1
        return argparse.Namespace(used=(100 + self.reads) * 2 ** 20)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 300_000  # mW

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetUtilizationRates(self, handle):
        return argparse.Namespace(gpu=50)

    def nvmlDeviceGetTemperature(self, handle, kind):
        raise RuntimeError("not supported on this card")  # a missing counter is skipped


def test_gpu_telemetry_samples_through_nvml():
    nvml = FakeNvml()
    with GpuTelemetry("cuda:0", interval_s=0.005, nvml=nvml) as telemetry:
        time.sleep(0.05)
    summary = telemetry.summary()
    assert summary.available and summary.samples == nvml.reads >= 2 and nvml.shut
    assert summary.peak_memory_mib == 100 + nvml.reads  # the largest reading, taken last
    assert (summary.max_power_w, summary.mean_power_w, summary.max_sm_clock_mhz) == (300.0, 300.0, 1980)
    assert summary.mean_util_pct == 50 and summary.max_temp_c is None


def test_gpu_telemetry_degrades_quietly():
    for device, nvml, why in (("cpu", None, "device is cpu"),
                              ("cuda:0", FakeNvml(fail_init=True), "Library Not Found"),
                              ("cuda:0", None, "NVML telemetry unavailable")):  # no driver or no pynvml here
        if nvml is None and device != "cpu" and torch.cuda.is_available():
            continue
        with GpuTelemetry(device, nvml=nvml) as telemetry:
            pass
        summary = telemetry.summary()
        assert not summary.available and why in summary.note
        assert summary.to_dict()["peak_memory_mib"] is None


@pytest.mark.skipif(not RssSampler.available(), reason="no /proc/self/statm")
def test_rss_sampler_sees_a_large_allocation():
    with RssSampler(interval_s=0.005) as rss:
        block = torch.ones(16 * 2 ** 20)  # 64 MiB, written so its pages are resident
        time.sleep(0.03)
    assert rss.peak_mib - rss.baseline_mib >= 48
    del block


def test_cpu_ceilings_are_measured_and_labelled():
    c = measure_ceilings("cpu", matmul_size=64, copy_bytes=1 << 20, repeats=2, warmup=0)
    assert c.matmul_tflops > 0 and c.copy_gbps > 0 and c.device == "cpu" and c.matmul_dtype == "float32"
    assert "CPU" in c.label and c.roofline().hbm_gbps == c.copy_gbps
    with pytest.raises(ValueError, match="copy_bytes"):
        measure_ceilings("cpu", copy_bytes=2)


# ------------------------------------------------------------------------------------------------
# Rows and report writers
# ------------------------------------------------------------------------------------------------

def tiny_context(**changes) -> BenchContext:
    ceilings = MeasuredCeilings(100.0, 1000.0, "given", 0, 0, "cpu", "given")
    base = dict(preset="tiny", model=get_preset("tiny"), width=64, height=64, frames=9,
                device=torch.device("cpu"), dtype=torch.float32, repeats=1, warmup=0, ceilings=ceilings)
    return BenchContext(**(base | changes))


def test_make_row_rates_and_floor():
    ctx = tiny_context()
    cost = dit_forward_cost(ctx.dit_config, 64, 64, 9, 2, dtype_bytes=4)
    stats = timing.summarize([0.002])
    row = make_row(ctx, "dit", "dit forward", "x", stats, shape="s", dtype="fp32", cost=cost,
                   accuracy={"rel_l2": 1e-6})
    assert set(ROW_FIELDS) <= set(row)
    assert row["tflops"] == pytest.approx(cost.flops / 0.002 / 1e12)
    assert row["gbps"] == pytest.approx(cost.bytes / 0.002 / 1e9)
    floor = max(cost.flops / 100e12, cost.bytes / 1000e9)
    assert row["pct_of_floor"] == pytest.approx(100 * floor / 0.002) and row["rel_l2"] == 1e-6


def test_text_encoder_cost_matches_the_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from wan_engine.bench.suites.common import text_encoder_cost
    from wan_engine.configs import TINY_T5
    from wan_engine.assembly import random_text_encoder

    # Eager attention so the counter sees the attention GEMMs as matmuls.
    encoder = random_text_encoder(TINY_T5, attn_implementation="eager")
    ids = torch.randint(0, TINY_T5.vocab_size, (2, TINY_T5.text_len), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder.hidden_states(ids, torch.ones_like(ids))
    assert text_encoder_cost(TINY_T5, 2, 4).flops == counter.get_total_flops()


def test_context_and_suite_names_are_validated():
    with pytest.raises(ValueError, match="frames must be 4n"):
        tiny_context(frames=10)
    with pytest.raises(ValueError, match="repeats"):
        tiny_context(repeats=0)
    assert expand(["dit", "all", "vae"])[:2] == ["dit", "roofline"]
    with pytest.raises(ValueError, match="unknown suite"):
        expand(["speed"])


def sample_report() -> dict:
    ctx = tiny_context()
    rows = [make_row(ctx, "vae", "vae decode", impl, timing.summarize([t]), shape="s", dtype="fp32",
                     accuracy=acc, oracle="ref")
            for impl, t, acc in (("reference", 0.01, None),
                                 ("bf16", 0.005, dict(rel_l2=1e-2, psnr=math.inf, ssim=0.99)),
                                 ("whole", 0.02, dict(rel_l2=0.0, psnr=60.0, ssim=1.0)))]
    env = report.environment(torch.device("cpu"), "python -m wan_engine.bench --suite vae")
    return dict(schema=report.SCHEMA, environment=env, settings=run.settings_of(ctx), ceilings=None,
                suites={"vae": dict(rows=rows, notes=["a note"], text="", telemetry=None, seconds=1.0)}, extra={})


def test_report_writers_produce_parseable_files(tmp_path):
    rep = sample_report()
    paths = report.write_outputs(rep, tmp_path, "vae-tiny")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["environment"]["torch"] == torch.__version__ and loaded["environment"]["command"].startswith("python")
    assert [r["impl"] for r in loaded["suites"]["vae"]["rows"]] == ["reference", "bf16", "whole"]
    assert loaded["suites"]["vae"]["rows"][1]["psnr"] == "inf"  # JSON has no Infinity
    report.write_outputs(rep, tmp_path, "vae-tiny")  # history appends
    with open(paths["csv"], newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 6 and [float(x["median_ms"]) for x in lines[:3]] == [10.0, 5.0, 20.0]
    assert lines[0]["commit"] == (loaded["environment"]["commit"] or "")
    md = paths["markdown"].read_text()
    assert "| suite | case | impl |" in md and "a note" in md and f"]({paths['plot'].name})" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_history_survives_a_schema_change(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("date,suite,median_ms,old_column\n2026-01-01,dit,1.5,x\n")
    rep = sample_report()
    report.append_csv(path, report.all_rows(rep), rep["environment"])
    with open(path, newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 4 and lines[0]["old_column"] == "x" and lines[0]["median_ms"] == "1.5"
    assert lines[1]["impl"] == "reference" and lines[1]["old_column"] == ""


def test_terminal_table_drops_empty_columns():
    text = report.format_table(report.all_rows(sample_report()))
    header = text.splitlines()[0]
    assert "median ms" in header and "PSNR dB" in header and "TFLOP/s" not in header
    assert "inf" in text and len(text.splitlines()) == 5


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def test_roofline_cli_prints_the_breakdown_without_running_a_model(capsys, tmp_path):
    before = set(cli.DEFAULT_OUT.iterdir()) if cli.DEFAULT_OUT.exists() else set()
    assert cli.main(["--suite", "roofline", "--model", "t2v-1.3B", "--size", "832x480", "--frames", "81"]) == 0
    out = capsys.readouterr().out
    # The hand counts: ~283 TFLOP per sample, ~198 TFLOP of it self-attention; bf16 GEMMs.
    assert "batch 1, 32760 tokens, 2-byte GEMMs" in out
    assert "self_attn             197.815" in out and "total                 283.162" in out
    assert "VAE decode" in out and "VAE encode" in out
    assert (set(cli.DEFAULT_OUT.iterdir()) if cli.DEFAULT_OUT.exists() else set()) == before  # prints only
    assert cli.main(["--suite", "roofline", "--model", "t2v-14B", "--size", "1280x720", "--frames", "81",
                     "--tflops", "800", "--gbps", "3000", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "75600 tokens" in out and "floor ms" in out and len(list(tmp_path.glob("*.json"))) == 1


def test_cli_refuses_bad_options(capsys):
    assert cli.main(["--suite", "roofline", "--frames", "10"]) == 2
    assert "frames must be 4n+1" in capsys.readouterr().err
    assert cli.main(["--suite", "dit", "--tflops", "1"]) == 2
    assert "--tflops and --gbps" in capsys.readouterr().err
    for argv in (["--suite", "speed"], ["--size", "832by480"], ["--model", "t2v-2B"]):
        with pytest.raises(SystemExit):
            cli.main(argv)


def test_add_bench_parser_wires_a_subcommand():
    parser = argparse.ArgumentParser(prog="wan-engine")
    cli.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--suite", "dit,vae", "--model", "tiny", "--repeats", "2"])
    assert args.func is cli.run_command and args.suite == ["dit", "vae"] and args.repeats == 2


def test_suites_fill_accuracy_and_write_every_output(tmp_path, capsys):
    argv = ["--suite", "attention,step", "--model", "tiny", "--repeats", "1", "--warmup", "0", "--no-compile",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    loaded = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = [r for s in loaded["suites"].values() for r in s["rows"]]
    compared = [r for r in rows if r["oracle"] and r["oracle"] != "(is the oracle)"]
    assert compared and all(r["rel_l2"] is not None and r["cosine"] is not None for r in compared)
    # fp32 on CPU: every fp32 implementation equals the fp64/fp32 oracle to rounding.
    assert all(r["rel_l2"] < 1e-5 for r in compared if r["dtype"] == "fp32")
    executor = [r for r in rows if r["impl"] == "executor"]
    assert executor and executor[0]["pct_of_floor"] > 0  # CPU ceilings were measured
    with open(tmp_path / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert "== step" in capsys.readouterr().out


GPU_TESTS = """
import pytest

@pytest.mark.gpu
def test_gpu_passes():
    assert 1 + 1 == 2

def test_not_selected():
    assert False, "deselected by -m 'gpu or multigpu'"
"""


def test_gpu_check_dry_run(tmp_path):
    """The whole check at reduced sizes, pinned to the CPU; every threshold comes from the dtype
    the check used (read from its report) through bench.bounds, never from fixed fp32 names."""
    tests, out = tmp_path / "gpu_tests", tmp_path / "out"
    tests.mkdir()
    (tests / "test_fake_gpu.py").write_text(GPU_TESTS)
    result = run_gpu_check(out, dry_run=True, device="cpu", tests=str(tests), log=lambda *_: None)
    assert not result["failed"], result["report"]["failures"]
    assert sorted(p.name for p in out.iterdir()) == sorted([result["markdown"].name, result["json"].name])
    loaded = json.loads(result["json"].read_text())
    dtype = loaded["settings"]["dtype"]
    assert loaded["settings"]["device"] == "cpu" and dtype == "fp32"  # the device's default dtype
    ran = {t["id"].split("::")[-1]: t["outcome"] for t in loaded["tests"]["tests"]}
    assert ran == {"test_gpu_passes": "passed"}
    assert loaded["tests"]["counts"] | {} == dict(passed=1, failed=0, error=0, skipped=0, deselected=1)
    assert "NCCL tests (marker multigpu) did not run" in loaded["tests"]["nccl"]
    assert set(loaded["suites"]) == set(CHECK_SUITES) and set(loaded["part_seconds"]) == {"setup", "tests",
                                                                                            *CHECK_SUITES}
    rows = [r for s in loaded["suites"].values() for r in s["rows"]]
    assert all(r["verdict"] != bounds.FAIL for r in rows)

    triton = [r for r in loaded["suites"]["kernels"]["rows"] if r["impl"] == "triton"]
    assert len(triton) == 5 and all(r["acc_limit"] == bounds.kernel_bound(dtype).limit >= r["rel_l2"]
                                    and r["verdict"] == bounds.PASS for r in triton)
    attention = [r for r in loaded["suites"]["attention"]["rows"]]
    assert attention and all(r["attention"] == r["impl"] and r["verdict"] == bounds.PASS for r in attention)

    layers = loaded["settings"]["layers"]
    dit = {r["impl"]: r for r in loaded["suites"]["dit"]["rows"]}
    low = "bf16" if dtype == "fp32" else dtype  # the baseline's dtype: bf16 beside an fp32 engine
    baseline = dit["reference-bf16" if dtype == "fp32" else "reference"]
    assert baseline["dtype"] == low and baseline["acc_limit"] == bounds.reference_bound(low, layers).limit
    same_dtype_error = 0.0 if dtype == "fp32" else baseline["rel_l2"]  # in fp32 the reference is the oracle
    expected = bounds.optimized_bound(dtype, layers, same_dtype_error, "").limit
    assert dit["executor"]["dtype"] == dtype and dit["executor"]["acc_limit"] == pytest.approx(expected)
    assert dit["executor"]["rel_l2"] <= expected and dit["executor"]["attention"] == "sdpa (auto)"
    # Lossless rows only: diffusers is a peer and tiling is lossy (both measured, not judged).
    vae = [r for r in loaded["suites"]["vae"]["rows"]
           if r["psnr"] is not None and r["impl"] != "diffusers" and not r["impl"].startswith("tiled")]
    # JSON writes an exact match's infinite PSNR as the string "inf".
    assert vae and all(float(r["psnr"]) >= bounds.vae_frames_bound(r["dtype"]).limit and 0 < r["ssim"] <= 1
                       for r in vae)
    md = result["markdown"].read_text()
    for text in ("Verdict: PASS", "Time per part", "test_fake_gpu.py::test_gpu_passes", "counts: passed 1",
                 "## dit", "## vae", "Accuracy bounds", bounds.kernel_bound(dtype).rule):
        assert text in md, text
    # Graph rows are GPU-only: on the CPU the report says so rather than claiming them.
    assert "executor+graphs: skipped (CUDA graphs need a GPU)" in md and "static-graphs: skipped" in md


def test_parallel_suite_matches_one_process():
    from wan_engine.bench.suites import run_suite

    result = run_suite("parallel", tiny_context(repeats=1))
    rows = {(r["case"], r["impl"]): r for r in result.rows}
    assert rows[("comm per step (per rank)", "ring-2")]["bytes"] > 0
    # fp32 on gloo: the same function as one process, summed in another order (measured <= 2e-7).
    for key in (("ulysses attention", "gloo-2"), ("ring attention", "gloo-2"),
                ("dit forward", "ulysses-2"), ("dit forward", "ring-2")):
        assert rows[key]["rel_l2"] < 1e-5, (key, result.notes)
    assert "scaling efficiency" in rows[("dit forward", "ring-2")]["note"]
    # The row-parallel VAE: the one-rank output within the fp32 VAE bound (oneDNN may sum a slab's
    # convolutions in another order), and each rank's working memory about half of one rank alone
    # (its rows plus halos, then the gathered output; measured 0.49-0.53x).
    for case in ("vae decode", "vae encode"):
        alone, split = rows[(case, "vae-1")], rows[(case, "rows-2")]
        assert split["verdict"] == "pass" and split["rel_l2"] < 1e-5, split
        assert 0 < split["peak_mem_mib"] < 0.7 * alone["peak_mem_mib"], (split, alone)
