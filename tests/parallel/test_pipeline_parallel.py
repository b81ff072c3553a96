"""The whole tiny pipeline launched as `torchrun ... -m wan_engine.cli generate` on gloo ranks gives
the video of one process; bad layouts are refused before the model loads; a failed rank makes its
peers exit non-zero within --dist-timeout.

Frames are compared as the exact uint8 arrays (`--save-frames`), not through the lossy MP4. A
parallel run differs from the single-process one only in fp32 summation order (ring attention
merges blocks by log-sum-exp; CFG parallelism runs each branch as its own forward instead of one
batch-2 forward, ~1e-6 relative on the guided velocity), so a pixel whose value sits on a
quantization boundary may flip by one level; more than one level would mean a real difference.
Every subprocess runs in a temporary directory, so it imports the installed package only.

The 48x48, 9-frame request has 3 x 3 x 3 = 27 latent tokens: divisible by neither 2 nor 4, so
every sequence-parallel layout pads and masks.
"""
from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from checkpoint_factory import write_original
from wan_engine.cli import main as cli_main
from wan_engine.configs import get_preset
from wan_engine.video import read_video

REQUEST = ["--prompt", "a red kite above a grey sea", "--size", "48x48", "--frames", "9", "--steps", "4",
           "--seed", "7"]
LAYOUTS = {  # name -> (processes, CLI flags)
    "ulysses2": (2, ["--ulysses", "2"]),
    "ring2": (2, ["--ring", "2"]),
    "ulysses2_ring2": (4, ["--ulysses", "2", "--ring", "2"]),
    "cfg2": (2, ["--cfg-parallel"]),
    "cfg2_ulysses2": (4, ["--cfg-parallel", "--ulysses", "2"]),
    "ulysses2_shard_weights": (2, ["--ulysses", "2", "--shard-weights"]),  # each rank holds half the blocks
}
RUN_TIMEOUT_S = 180
DIST_TIMEOUT_S = 5.0
SLACK_S = 15.0  # process exit and scheduling on a loaded 2-core machine


def _generate(cwd: Path, name: str, launcher: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "wan_engine.cli", "generate", *REQUEST, "--output", f"{name}.mp4",
           "--save-frames", f"{name}.npy", *extra]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline_parallel")


@pytest.fixture(scope="module")
def single_frames(workdir) -> np.ndarray:
    proc = _generate(workdir, "single", [sys.executable], [])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(workdir / "single.npy")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_torchrun_layout_gives_the_single_process_video(workdir, single_frames, layout):
    nproc, flags = LAYOUTS[layout]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    proc = _generate(workdir, layout, torchrun, flags)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # Only rank 0 prints (and writes): one report for the whole launch.
    assert len(re.findall(r"^wrote ", proc.stdout, flags=re.M)) == 1, proc.stdout
    # 'auto' becomes the documented order on several ranks: no rank probes its own choice.
    assert re.search(r"attention: \S+ \(auto-order", proc.stdout), proc.stdout
    split = re.search(r"dit weights: blocks and text K/V split over 2 ranks, ([0-9.]+) MiB", proc.stdout)
    assert (split is not None) == ("--shard-weights" in flags), proc.stdout
    frames = np.load(workdir / f"{layout}.npy")
    assert frames.shape == single_frames.shape == (9, 48, 48, 3)
    diff = np.abs(frames.astype(np.int16) - single_frames.astype(np.int16))
    print(f"{layout}: max |diff| {diff.max()} levels, {int((diff > 0).sum())} of {diff.size} values differ")
    assert diff.max() <= 1
    assert read_video(workdir / f"{layout}.mp4").shape == (9, 48, 48, 3)


# --- refused before any work -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_less_model(tmp_path_factory) -> Path:
    """A tiny checkpoint whose VAE is missing: loading it fails, so an error about the degrees
    proves they were checked before the load."""
    root = write_original(tmp_path_factory.mktemp("model") / "tiny", get_preset("tiny"))
    (root / "Wan2.1_VAE.pth").unlink()
    return root


def test_a_layout_larger_than_the_launch_is_refused_before_loading(vae_less_model, tmp_path, capsys):
    rc = cli_main(["generate", "--model", str(vae_less_model), *REQUEST, "--ulysses", "2",
                   "--output", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "needs world_size=2 processes, but a single process was started" in err, err
    assert "torchrun --nproc-per-node 2" in err


@pytest.mark.parametrize("flags,message", [
    (["--ulysses", "0"], "ulysses must be >= 1, got 0"),
    (["--engine", "reference", "--ring", "2"], "needs engine='executor'"),
    (["--ring", "-2"], "ring must be >= 1, got -2"),
    (["--dist-timeout", "0"], "--dist-timeout must be a finite number of seconds > 0"),
])
def test_malformed_degrees_are_refused(flags, message, tmp_path, capsys):
    rc = cli_main(["generate", *REQUEST, *flags, "--output", str(tmp_path / "x.mp4")])
    assert rc == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--shard-weights"], "has none; launch with --ulysses or --ring > 1"),
    (["--shard-weights", "--engine", "reference"], "shard_weights needs engine='executor'"),
])
def test_a_weight_split_without_a_sequence_parallel_executor_is_refused_before_loading(
        vae_less_model, flags, message, tmp_path, capsys):
    rc = cli_main(["generate", "--model", str(vae_less_model), *REQUEST, *flags, "--output", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err


def test_ulysses_that_does_not_divide_the_heads_is_refused_before_loading(vae_less_model, tmp_path):
    """Rank 0 of a 4-process launch (torchrun's variables; its peers are never started): the
    tiny model has 2 heads, so Ulysses 4 must be refused at once, with a split that works."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "wan_engine.cli", "generate", "--model", str(vae_less_model), *REQUEST,
           "--ulysses", "4", "--output", "x.mp4", "--dist-timeout", "5"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ulysses=4 does not divide num_heads=2" in proc.stderr, proc.stderr[-3000:]
    assert "valid ulysses degrees: 1, 2" in proc.stderr and "--ulysses 2 --ring 2" in proc.stderr


# --- a failing rank ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_until(stream, marker: bytes, timeout_s: float) -> bytes:
    """Bytes read from `stream` until `marker` appears (tqdm writes '\\r', not lines)."""
    seen, deadline = b"", time.monotonic() + timeout_s
    while marker not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(left, 0))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        if not chunk:
            raise AssertionError(f"no {marker!r} within {timeout_s} s; got {seen[-2000:]!r}")
        seen += chunk
    return seen


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSTOP"])
def test_a_failed_rank_makes_its_peer_exit_nonzero_within_the_timeout(tmp_path, signal_name):
    """Two ranks started by hand with torchrun's variables (torchrun itself would tear the
    survivors down, which is not what is under test). Once rank 0 is denoising, rank 1 is killed
    (its connections close) or stopped (a hang: alive, silent); rank 0 must fail with a clear
    error within --dist-timeout (+ slack), not hang."""
    port = _free_port()
    procs = []
    try:
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-m", "wan_engine.cli", "generate", *REQUEST[:-4], "--steps", "400",
                   "--ulysses", "2", "--dist-timeout", str(DIST_TIMEOUT_S), "--output", f"rank{rank}.mp4"]
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
        seen = _read_until(procs[0].stderr, b"denoising", timeout_s=120)
        procs[1].send_signal(getattr(signal, signal_name))
        failed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=DIST_TIMEOUT_S + SLACK_S)
        took = time.monotonic() - failed_at
        message = (seen + err).decode(errors="replace")
        print(f"{signal_name}: rank 0 exited with {procs[0].returncode} after {took:.1f} s")
        assert procs[0].returncode == 1, message[-3000:]
        assert "rank 0 of 2 (cfg=1 x ring=1 x ulysses=2): a collective failed" in message, message[-3000:]
        assert took <= DIST_TIMEOUT_S + SLACK_S
        assert not (tmp_path / "rank0.mp4").exists()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
