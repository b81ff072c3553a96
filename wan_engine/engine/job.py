"""A job: one request's life in the Engine (queued -> in_progress -> completed / failed / cancelled).

Its state is changed only by the Engine's worker thread (and `cancel` from any thread), under
the job's own lock; readers take a consistent `snapshot()`.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from .request import GenerationRequest

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
FINISHED = (COMPLETED, FAILED, CANCELLED)


class GenerationCancelled(Exception):
    """Raised between denoising steps to stop a job whose cancellation was requested."""


class QueueFull(RuntimeError):
    """The Engine's queue holds `max_queue` jobs already; the request was not accepted."""


class EngineClosed(RuntimeError):
    """The Engine was closed (or lost a rank) and accepts no more jobs."""


@dataclass
class JobError:
    code: str  # "invalid_request", "generation_failed", "rank_failed", "server_restarted", ...
    message: str


@dataclass
class JobSnapshot:
    id: str
    request: GenerationRequest
    status: str
    step: int
    total_steps: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    seed: int | None
    timings: dict = field(default_factory=dict)
    error: JobError | None = None
    cancel_step: int | None = None  # the steps done when the cancellation was asked for (None: never)

    @property
    def progress(self) -> int:
        """0-100: the share of denoising steps done; 100 only once completed."""
        if self.status == COMPLETED:
            return 100
        return min(99, 100 * self.step // self.total_steps) if self.total_steps else 0


class Job:
    """Handle on a submitted request: `wait()`, `cancel()`, `snapshot()`, `result` once completed."""

    def __init__(self, request: GenerationRequest, job_id: str | None = None, listener=None):
        self.id = job_id or f"video_{uuid.uuid4().hex}"
        self.request = request
        self.listener = listener  # JobListener or None; its hooks run on the worker thread
        self.result = None  # GenerationResult once completed (frames on rank 0 only)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._status = QUEUED
        self._cancel_requested = False
        self._cancel_step: int | None = None
        self._step = 0
        self._created_at = time.time()
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._timings: dict = {}
        self._error: JobError | None = None

    # -- readers ----------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            seed = self.result.seed if self.result is not None else self.request.seed
            return JobSnapshot(self.id, self.request, self._status, self._step, self.request.num_inference_steps or 0,
                               self._created_at, self._started_at, self._finished_at, seed, dict(self._timings),
                               self._error, self._cancel_step)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finished (any final status); False if `timeout` passed first."""
        return self._done.wait(timeout)

    # -- writers ----------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the job to stop: a queued job never starts, a running one stops after its current step."""
        with self._lock:
            if not self._cancel_requested:
                self._cancel_requested, self._cancel_step = True, self._step

    def _start(self) -> None:
        with self._lock:
            self._status, self._started_at = IN_PROGRESS, time.time()

    def _advance(self, step: int) -> None:
        with self._lock:
            self._step = step

    def _finish(self, status: str, *, result=None, error: JobError | None = None) -> None:
        with self._lock:
            self._status, self._finished_at, self._error = status, time.time(), error
            if result is not None:
                self.result = result
                self._timings = dict(result.timings)

    def _release(self) -> None:
        self._done.set()


class JobListener:
    """Hooks a host (a server) attaches to a job; all run on the Engine's worker thread, in order.
    `on_finish` runs before `wait()` returns, so whatever it persists is in place by then."""

    def on_start(self, job: Job) -> None: ...

    def on_step(self, job: Job, step: int, total: int, seconds: float) -> None: ...

    def on_finish(self, job: Job) -> None: ...
