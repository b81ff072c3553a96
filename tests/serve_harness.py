"""Start the real `wan-engine serve` in a subprocess on 127.0.0.1 and wait until it answers.

The subprocess runs in a temporary folder (so it imports the installed package only) with one
intra-op thread, as the tests do.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TINY_REQUEST = {"size": "32x32", "num_frames": 5, "num_inference_steps": 2}
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resident_bytes(pid: int) -> int:
    """VmRSS of a live process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """`with ServerProcess(tmp) as server:` ... `server.url`; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, workdir: Path, *extra: str, output_dir: Path | None = None, env: dict | None = None,
                 port: int | None = None, wait: bool = True):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.output_dir = output_dir or self.workdir / "jobs"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"server-{self.port}.log"
        self.cmd = [sys.executable, "-m", "wan_engine.cli", "serve", "--model", "tiny", "--device", "cpu",
                    "--port", str(self.port), "--output-dir", str(self.output_dir), *extra]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.wait = wait
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if self.wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout_s} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind (the restart test's crash)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_status(client: httpx.Client, job_id: str, statuses=("completed", "failed", "cancelled"),
                    timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/videos/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {statuses} within {timeout_s} s: {job}")
