"""`Engine`: a pipeline loaded once, a bounded queue of jobs and one worker that runs them in turn.

    engine = Engine.from_pretrained("tiny", max_queue=8)
    job = engine.submit(GenerationRequest("a red kite", num_inference_steps=4, seed=7))
    job.wait(); frames = job.result.frames

One generation at a time per GPU group: the worker thread and `generate` (the synchronous path
the CLI uses) share one lock around the pipeline. Under torchrun, rank 0 owns the queue and tells
the other ranks (which sit in `follow()`) each job through a `RankChannel`; all ranks then run it
together and agree after every step whether to stop, so a cancellation stops every rank at the
same step. While idle, rank 0 sends a heartbeat so that the followers' wait never reaches the
process-group timeout, and a dead follower is noticed between jobs too. A failed collective is
fatal: the process group is unusable, so the Engine fails the running and queued jobs, closes,
and calls `on_fatal` (a server then exits; see wan_engine/serve/cli.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from ..cache import check_cache_runs_on
from ..parallel.runtime import DEFAULT_TIMEOUT_S, PeerFailure, peer_failure_guard
from ..pipelines.image_prompt import IMAGE_OPTIONAL
from .job import (
    CANCELLED, COMPLETED, FAILED, EngineClosed, GenerationCancelled, Job, JobError, JobListener, QueueFull,
)
from .rank_channel import RankChannel
from .request import GenerationRequest, RequestError, RequestLimits, check_cache_spec, resolve_request

log = logging.getLogger(__name__)

UNBOUNDED = RequestLimits(max_prompt_chars=10**9, max_width=10**9, max_height=10**9, max_frames=10**9,
                          max_steps=10**9)


class Engine:
    """Load once, generate many. `limits` None: no bounds beyond the model's own (the CLI);
    a server passes `RequestLimits`. `max_queue` counts jobs waiting, not the running one."""

    def __init__(self, pipeline, *, max_queue: int = 16, limits: RequestLimits | None = None,
                 dist_timeout_s: float = DEFAULT_TIMEOUT_S, on_fatal=None):
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        self.pipeline = pipeline
        self.max_queue = max_queue
        self.limits = limits or UNBOUNDED
        self.dist_timeout_s = dist_timeout_s
        self.on_fatal = on_fatal
        self.warmup_seconds: float | None = None
        mesh = pipeline.mesh
        self.rank = mesh.rank
        self.channel = RankChannel(mesh.rank) if pipeline.is_parallel else None
        # Idle followers wait in a broadcast bounded by the process-group timeout; beat well inside it.
        self.heartbeat_s = min(dist_timeout_s / 4, 10.0)
        self._gpu = threading.Lock()
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._active: dict[str, Job] = {}
        self._running: Job | None = None
        self._closed = False
        self.fatal_error: str | None = None
        self._worker: threading.Thread | None = None

    @classmethod
    def from_pretrained(cls, path_or_preset, *, max_queue: int = 16, limits: RequestLimits | None = None,
                        warmup: bool = False, dist_timeout_s: float = DEFAULT_TIMEOUT_S, on_fatal=None,
                        **pipeline_options) -> "Engine":
        """Build the pipeline (`WanPipeline.from_pretrained` options) and the Engine around it;
        `warmup` runs one short generation first (on every rank of a launch)."""
        from ..pipelines.t2v import WanPipeline

        pipe = WanPipeline.from_pretrained(path_or_preset, dist_timeout_s=dist_timeout_s, **pipeline_options)
        engine = cls(pipe, max_queue=max_queue, limits=limits, dist_timeout_s=dist_timeout_s, on_fatal=on_fatal)
        if warmup:
            engine.warmup()
        return engine

    # -- requests ---------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.pipeline.config.name

    @property
    def model_type(self) -> str:
        """"t2v", "i2v", "flf2v" or "ti2v" (`DiTConfig.task`): which images a request must or may carry."""
        return self.pipeline.config.dit.task

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """The request with every field checked (RequestError names the bad one) and every default
        filled in, the seed included (drawn here when unset, so the job reports it from the start)."""
        return self._refuse_unrunnable(resolve_request(request, self.pipeline.config.sample, self.limits,
                                                       size_multiple=self.pipeline.config.size_multiple))

    def _refuse_unrunnable(self, req: GenerationRequest) -> GenerationRequest:
        # Refused at submit (a 422 from the server) instead of failing on every rank once the job runs.
        if req.cfg is False and self.pipeline.mesh.cfg_size == 2:
            raise RequestError("cfg", "cfg false runs one branch; this server runs the two CFG branches on "
                                      "different ranks (--cfg-parallel)")
        limits = self.pipeline.export_limits
        if limits is not None:  # an image-conditioned video's size follows its image, checked when it runs
            with_images = req.image is not None or req.last_image is not None
            refused = limits.refusal(req.num_frames, *((None, None) if with_images else req.size))
            if refused is not None:
                raise RequestError(*refused)
        cache = check_cache_spec(req.cache)
        if cache is not None:
            try:
                check_cache_runs_on(cache, self.pipeline.dit)
            except ValueError as err:
                raise RequestError("cache", str(err)) from None
        return req

    def warmup(self) -> float:
        """One short generation so that compilation, attention probing and allocator growth happen
        before the first real job: the default size, 1 frame (flf2v: 5), 2 steps, gray frames for an
        image-conditioned model; with an exported engine, the smallest video it runs. Every rank
        calls it."""
        start = time.perf_counter()
        req = self._warmup_request()
        self._run(req, None, images=self._warmup_images(req))
        self.warmup_seconds = time.perf_counter() - start
        log.info("warm-up took %.2f s", self.warmup_seconds)
        return self.warmup_seconds

    def _warmup_request(self) -> GenerationRequest:
        limits = self.pipeline.export_limits
        if limits is None:  # an flf2v video holds its two given frames: 5 frames, the least above 1
            frames = 5 if self.pipeline.config.dit.task == "flf2v" else 1
            return GenerationRequest("warm-up", num_frames=frames, num_inference_steps=2, seed=0)
        multiple = self.pipeline.config.size_multiple
        width, height = (-(-lo // multiple) * multiple for lo in (limits.width[0], limits.height[0]))
        return GenerationRequest("warm-up", size=(width, height), num_frames=limits.frames[0],
                                 num_inference_steps=2, seed=0)

    def _warmup_images(self, req: GenerationRequest):
        """Mid-gray frames of the warm-up's size for a model that needs them (i2v: the first frame;
        flf2v: both); None for the others, which warm up on text alone."""
        task = self.pipeline.config.dit.task
        if task in IMAGE_OPTIONAL:
            return None
        width, height = self.pipeline.config.sample.size if req.size is None else req.size
        frame = np.full((height, width, 3), 128, dtype=np.uint8)
        return frame, (frame if task == "flf2v" else None)

    def generate(self, request: GenerationRequest, *, progress: bool = False, on_step=None):
        """Run `request` now in the caller's thread (every rank of a launch calls it alike) and
        return the `GenerationResult`. `on_step(done, total)` may raise GenerationCancelled.
        Under a launch an unset seed is left to the pipeline, which draws it on rank 0 for all;
        there the queue's worker (which talks to the other ranks) must not be running."""
        if self.channel is not None and self._worker is not None:
            raise RuntimeError("generate() under a launch cannot run beside the queue's worker; use submit()")
        req = self._refuse_unrunnable(resolve_request(request, self.pipeline.config.sample, self.limits,
                                                      draw_seed=not self.pipeline.is_parallel,
                                                      size_multiple=self.pipeline.config.size_multiple))
        return self._run(req, on_step, progress=progress)

    def submit(self, request: GenerationRequest, *, job_id: str | None = None,
               listener: JobListener | None = None) -> Job:
        """Queue `request` and return its Job at once. Thread-safe. Raises RequestError for a bad
        field, QueueFull when `max_queue` jobs are waiting, EngineClosed after close()."""
        if self.rank != 0:
            raise RuntimeError("submit on rank 0; the other ranks run follow()")
        job = Job(self.resolve(request), job_id, listener)
        with self._cond:
            if self._closed:
                raise EngineClosed(self.fatal_error or "the engine is closed")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); retry later")
            if job.id in self._active:
                raise ValueError(f"job id {job.id!r} is already in use")
            self._queue.append(job)
            self._active[job.id] = job
            self._ensure_worker()
            self._cond.notify_all()
        return job

    def start(self) -> None:
        """Start the worker now rather than at the first submit: under a launch it must beat
        (heartbeats) from the moment the other ranks enter follow()."""
        if self.rank != 0:
            raise RuntimeError("start the worker on rank 0; the other ranks run follow()")
        with self._cond:
            self._ensure_worker()

    def get(self, job_id: str) -> Job | None:
        """A queued or running job (finished jobs are the caller's to keep)."""
        with self._cond:
            return self._active.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Stop a job: dropped from the queue, or stopped after the running step. None if unknown."""
        with self._cond:
            job = self._active.get(job_id)
            if job is None:
                return None
            job.cancel()
            if job in self._queue:
                self._queue.remove(job)
                self._finish(job, CANCELLED)
        return job

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> Job | None:
        return self._running

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop accepting jobs, cancel the queued and the running one, release the followers."""
        with self._cond:
            if self._closed and self._worker is None:
                return
            self._closed = True
            for job in list(self._queue):
                self._queue.remove(job)
                job.cancel()
                self._finish(job, CANCELLED)
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
        elif self.channel is not None and self.rank == 0 and self.fatal_error is None:
            self.channel.send({"kind": "stop"})  # no worker ever ran: release the followers here

    def follow(self) -> int:
        """Ranks other than 0: run what rank 0 sends until it says stop. Returns the exit code
        (1 after a failed collective: the launch is over)."""
        if self.channel is None or self.rank == 0:
            raise RuntimeError("follow() is for ranks other than 0 of a parallel launch")
        while True:
            try:
                with peer_failure_guard(self.pipeline.mesh, self.dist_timeout_s):
                    message = self.channel.receive()
            except PeerFailure as e:
                log.error("%s", e)
                return 1
            if message["kind"] == "stop":
                return 0
            if message["kind"] != "job":
                continue  # heartbeat
            request = GenerationRequest.from_json(message["request"])
            try:
                self._run(request, self._follower_step)
            except GenerationCancelled:
                continue
            except PeerFailure as e:
                log.error("%s", e)
                return 1
            except ValueError as e:  # deterministic: rank 0 failed the same way and carries on
                log.warning("job %s failed: %s", message.get("id"), e)

    # -- worker -----------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="wan-engine-worker", daemon=True)
            self._worker.start()

    def _next_job(self) -> Job | None:
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(self.heartbeat_s if self.channel is not None else None)
            if self._queue:
                self._running = self._queue.popleft()
                return self._running
            return None

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is not None:
                self._execute(job)
                continue
            with self._cond:
                closed = self._closed
            if self.channel is None or self.fatal_error is not None:
                if closed:
                    return
                continue
            try:
                with peer_failure_guard(self.pipeline.mesh, self.dist_timeout_s):
                    self.channel.send({"kind": "stop" if closed else "heartbeat"})
            except PeerFailure as e:
                self._fail_fatally(str(e))
                return
            if closed:
                return

    def _execute(self, job: Job) -> None:
        listener = job.listener or JobListener()
        job._start()
        _call(listener.on_start, job)
        last = [time.perf_counter()]

        def on_step(done: int, total: int) -> None:
            now = time.perf_counter()
            job._advance(done)
            _call(listener.on_step, job, done, total, now - last[0])
            last[0] = now
            stop = job.cancel_requested
            if self.channel is not None:
                stop = self.channel.agree(stop)
            if stop:
                raise GenerationCancelled(job.id)

        status, result, error = FAILED, None, None
        try:
            if self.channel is not None:
                with peer_failure_guard(self.pipeline.mesh, self.dist_timeout_s):
                    self.channel.send({"kind": "job", "id": job.id, "request": job.request.to_json()})
            result = self._run(job.request, on_step)
            status = COMPLETED
        except GenerationCancelled:
            status = CANCELLED
        except PeerFailure as e:
            error = JobError("rank_failed", str(e))
        except RequestError as e:
            error = JobError("invalid_request", e.message)
        except Exception as e:  # noqa: BLE001 - one bad job must not take the worker down
            log.exception("job %s failed", job.id)
            error = JobError("generation_failed", f"{type(e).__name__}: {e}")
        with self._cond:
            self._running = None
        self._finish(job, status, result=result, error=error)
        if error is not None and error.code == "rank_failed":
            self._fail_fatally(error.message)

    def _finish(self, job: Job, status: str, *, result=None, error: JobError | None = None) -> None:
        job._finish(status, result=result, error=error)
        if job.listener is not None:
            _call(job.listener.on_finish, job)
        with self._cond:
            self._active.pop(job.id, None)
        job._release()

    def _fail_fatally(self, message: str) -> None:
        log.error("engine stopped: %s", message)
        with self._cond:
            self.fatal_error = message
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            self._finish(job, FAILED, error=JobError("rank_failed", message))
        if self.on_fatal is not None:
            _call(self.on_fatal, message)

    def _follower_step(self, done: int, total: int) -> None:
        if self.channel.agree(False):
            raise GenerationCancelled()

    def _run(self, req: GenerationRequest, on_step, progress: bool = False, images=None):
        """`images`: (first, last) frames as arrays in place of the request's files (the warm-up's)."""
        image, last_image = (req.image, req.last_image) if images is None else images
        cache = check_cache_spec(req.cache) if req.cache is not None else "default"
        with self._gpu, peer_failure_guard(self.pipeline.mesh, self.dist_timeout_s):
            return self.pipeline.run(req.prompt, req.negative_prompt, req.size, req.num_frames,
                                     req.num_inference_steps, req.guidance_scale, req.shift, req.seed, req.solver,
                                     progress=progress, cache=cache, on_step=on_step, cfg=req.cfg,
                                     sampling=req.sampling, image=image, last_image=last_image,
                                     low_noise_guidance=req.guidance_scale_2)


def _call(hook, *args) -> None:
    """A host's hook failing is logged, never allowed to wedge the worker."""
    try:
        hook(*args)
    except Exception:  # noqa: BLE001
        log.exception("engine hook %s failed", getattr(hook, "__qualname__", hook))
