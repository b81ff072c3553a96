"""`wan-engine serve` as a 2-process gloo launch (Ulysses 2): rank 0 serves HTTP and leads, rank 1
follows. Jobs (and a cancellation) run on both ranks in lockstep, an idle server outlives the
process-group timeout (heartbeats), a clean stop ends both ranks with 0, and a failing rank fails
the job with `rank_failed` and ends the server with status 1 within the timeout, never a hang.

The ranks are started by hand with torchrun's variables, so that one can be killed alone
(torchrun itself would tear the survivor down, which is not what is under test).
"""
from __future__ import annotations

import signal
import time

import httpx
import numpy as np
import pytest

from serve_harness import TINY_REQUEST, ServerProcess, free_port, wait_for_status
from wan_engine.engine import Engine, GenerationRequest
from wan_engine.pipelines.t2v import WanPipeline
from wan_engine.video import read_video, save_video
from test_serve_lifecycle import LONG, _wait_running

DIST_TIMEOUT_S = 5.0
SLACK_S = 20.0  # process exit and scheduling on a loaded 2-core machine


def _launch(tmp_path, jobs_dir, *extra):
    """(rank 0's ServerProcess, rank 1's), both started; rank 0 answering HTTP."""
    master = str(free_port())
    flags = ("--ulysses", "2", "--dist-timeout", str(DIST_TIMEOUT_S), *extra)
    port = free_port()
    ranks = []
    for rank in (1, 0):  # the follower first: rank 0's readiness wait then covers both loads
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": master}
        ranks.append(ServerProcess(tmp_path / f"rank{rank}", *flags, output_dir=jobs_dir, env=env, port=port,
                                   wait=rank == 0).start())
    return ranks[1], ranks[0]


def test_two_ranks_serve_jobs_cancel_idle_and_stop_cleanly(tmp_path):
    leader, follower = _launch(tmp_path, tmp_path / "jobs")
    try:
        with httpx.Client(base_url=leader.url, timeout=60) as c:
            body = {"prompt": "a red kite", "seed": 21, "size": "48x48", "num_frames": 9, "num_inference_steps": 3}
            job = wait_for_status(c, c.post("/v1/videos", json=body).json()["id"])
            assert job["status"] == "completed", job
            served = tmp_path / "served.mp4"
            served.write_bytes(c.get(f"/v1/videos/{job['id']}/content").content)

            long = c.post("/v1/videos", json={"prompt": "long", "seed": 1, **LONG}).json()["id"]
            _wait_running(c, long)
            assert c.delete(f"/v1/videos/{long}").status_code == 200  # both ranks stop at the same step
            time.sleep(DIST_TIMEOUT_S + 2)  # idle past the collective timeout: heartbeats keep the launch alive
            after = wait_for_status(c, c.post("/v1/videos", json={"prompt": "after", "seed": 2, **TINY_REQUEST})
                                    .json()["id"])
            assert after["status"] == "completed", after
            assert c.get("/health").json()["status"] == "ok"
        leader.proc.send_signal(signal.SIGTERM)  # graceful: rank 0 tells rank 1 to stop
        follower.proc.wait(30)
    finally:
        leader_rc, follower_rc = leader.stop(), follower.stop()
    # uvicorn re-raises the SIGTERM it handled, after the shutdown: rank 0 ends with that status.
    assert (leader_rc, follower_rc) == (-signal.SIGTERM, 0), leader.log()[-2000:] + follower.log()[-2000:]

    # One process, same request: a parallel run differs only in fp32 summation order.
    result = Engine(WanPipeline.from_pretrained("tiny", device="cpu")).generate(
        GenerationRequest("a red kite", size=(48, 48), num_frames=9, num_inference_steps=3, seed=21))
    local = read_video(save_video(result.frames, tmp_path / "local.mp4"))
    diff = np.abs(read_video(served).astype(np.int16) - local.astype(np.int16))
    print(f"2 ranks vs 1 process (decoded MP4s): max |diff| {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.mean() < 0.5 and diff.max() <= 16


def test_two_ranks_serve_an_uploaded_first_frame(tmp_path):
    """Every rank reads the job's stored upload (one node: the same path) and conditions on rank 0's."""
    from test_i2v import PROMPT, rgb
    from test_serve_images import png

    first = tmp_path / "first.png"
    first.write_bytes(png(rgb(48, 48, 5)))
    leader, follower = _launch(tmp_path, tmp_path / "jobs", "--model", "tiny-i2v", "--no-warmup")
    try:
        with httpx.Client(base_url=leader.url, timeout=60) as c:
            form = {"prompt": PROMPT, "seed": "3", "size": "48x48", "num_frames": "5", "num_inference_steps": "2"}
            created = c.post("/v1/videos", data=form, files={"input_reference": ("f.png", first.read_bytes())})
            job = wait_for_status(c, created.json()["id"])
            assert job["status"] == "completed", job
            served = tmp_path / "served.mp4"
            served.write_bytes(c.get(f"/v1/videos/{job['id']}/content").content)
    finally:
        leader.stop()
        follower.stop()
    result = Engine(WanPipeline.from_pretrained("tiny-i2v", device="cpu")).generate(
        GenerationRequest(PROMPT, size=(48, 48), num_frames=5, num_inference_steps=2, seed=3, image=str(first)))
    local = read_video(save_video(result.frames, tmp_path / "local.mp4"))
    diff = np.abs(read_video(served).astype(np.int16) - local.astype(np.int16))
    print(f"i2v, 2 ranks vs 1 process (decoded MP4s): max |diff| {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.mean() < 0.5 and diff.max() <= 16


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSTOP"])
def test_a_failing_rank_fails_the_job_and_ends_the_server(tmp_path, signal_name):
    jobs_dir = tmp_path / "jobs"
    leader, follower = _launch(tmp_path, jobs_dir)
    try:
        with httpx.Client(base_url=leader.url, timeout=60) as c:
            running = c.post("/v1/videos", json={"prompt": "long", "seed": 1, **LONG}).json()["id"]
            queued = c.post("/v1/videos", json={"prompt": "queued", **TINY_REQUEST}).json()["id"]
            _wait_running(c, running)
            follower.proc.send_signal(getattr(signal, signal_name))
            failed_at = time.monotonic()
            leader.proc.wait(DIST_TIMEOUT_S + SLACK_S)
            took = time.monotonic() - failed_at
    finally:
        if signal_name == "SIGSTOP" and follower.proc.poll() is None:
            follower.proc.send_signal(signal.SIGCONT)
        leader.stop()
        follower.stop()
    print(f"{signal_name} on rank 1: rank 0 exited with {leader.proc.returncode} after {took:.1f} s")
    assert leader.proc.returncode == 1, leader.log()[-3000:]
    assert took <= DIST_TIMEOUT_S + SLACK_S
    assert "a collective failed" in leader.log()
    # The failure is on record: a plain server on the same folder reads it back.
    with ServerProcess(tmp_path / "after", output_dir=jobs_dir) as single, \
            httpx.Client(base_url=single.url, timeout=60) as c:
        for job_id in (running, queued):
            job = c.get(f"/v1/videos/{job_id}").json()
            assert job["status"] == "failed" and job["error"]["code"] == "rank_failed", job
            assert "rank 0 of 2" in job["error"]["message"] and "collective" in job["error"]["message"]
