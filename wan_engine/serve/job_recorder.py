"""Writes what the Engine does to a job into the JobStore and the metrics, on the worker thread.

On completion the MP4 is written atomically (`save_video`) before the row says `completed`, and
the frames are dropped at once, so memory does not grow with the number of jobs served.
"""
from __future__ import annotations

import logging
import time

from ..engine import CANCELLED, COMPLETED, FAILED, Job, JobListener
from ..video import save_video
from .job_store import JobStore
from .metrics import ServerMetrics

log = logging.getLogger(__name__)


class JobRecorder(JobListener):
    def __init__(self, store: JobStore, metrics: ServerMetrics, fps: int):
        self.store, self.metrics, self.fps = store, metrics, fps

    def on_start(self, job: Job) -> None:
        self.store.update(job.id, status="in_progress")

    def on_step(self, job: Job, step: int, total: int, seconds: float) -> None:
        self.metrics.step_seconds.observe(seconds)

    def on_finish(self, job: Job) -> None:
        self.store.delete_inputs(job.id)  # read when the job started; nothing runs it again
        snap = job.snapshot()
        changes = {"status": snap.status, "completed_at": int(time.time()), "timings": snap.timings,
                   "seed": snap.seed, "progress": snap.progress}
        if snap.status == COMPLETED:
            frames, job.result.frames = job.result.frames, None
            try:
                save_video(frames, self.store.video_path(job.id), fps=self.fps)
            except (OSError, ValueError) as e:
                log.error("job %s: writing its MP4 failed: %s", job.id, e)
                changes.update(status=FAILED, progress=0,
                               error={"code": "output_failed", "message": f"writing the MP4 failed: {e}"})
            else:
                self.metrics.generation_seconds.observe(sum(snap.timings.values()))
        elif snap.status == CANCELLED:
            changes["error"] = {"code": "cancelled", "message": "the job was cancelled"}
            if snap.started_at is not None and snap.cancel_step is not None:
                self.metrics.cancel_steps.observe(snap.step - snap.cancel_step)
        elif snap.error is not None:
            changes["error"] = {"code": snap.error.code, "message": snap.error.message}
        if self.store.update(job.id, **changes) is None:  # deleted meanwhile: leave no file behind
            self.store.video_path(job.id).unlink(missing_ok=True)
        self.metrics.finished.labels(status=changes["status"]).inc()
