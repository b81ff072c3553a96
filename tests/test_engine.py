"""The Engine: one pipeline, a bounded queue, one worker; progress, cancellation between steps,
field-naming validation, deterministic seeds, and the same frames as the pipeline run directly."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from wan_engine.engine import (
    CANCELLED, COMPLETED, FAILED, Engine, EngineClosed, GenerationCancelled, GenerationRequest, JobListener,
    QueueFull, RequestError, RequestLimits,
)
from wan_engine.pipelines.t2v import WanPipeline

SMALL = dict(size=(32, 32), num_frames=5, num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return WanPipeline.from_pretrained("tiny", device="cpu", dtype="fp32")


@pytest.fixture
def engine(pipe):
    engine = Engine(pipe, max_queue=4, limits=RequestLimits())
    yield engine
    engine.close()


class Gate(JobListener):
    """Holds the worker inside the first step of a job until released (a stand-in for a long job)."""

    def __init__(self):
        self.entered, self.release, self.steps = threading.Event(), threading.Event(), []

    def on_step(self, job, step, total, seconds):
        self.steps.append((step, total))
        self.entered.set()
        assert self.release.wait(30)


def test_a_job_gives_the_frames_of_the_pipeline_run_directly(engine, pipe):
    job = engine.submit(GenerationRequest("a red kite", seed=11, **SMALL))
    assert job.wait(60) and job.status == COMPLETED, job.snapshot().error
    direct = pipe.run("a red kite", size=(32, 32), num_frames=5, steps=2, seed=11)
    np.testing.assert_array_equal(job.result.frames, direct.frames)
    snap = job.snapshot()
    assert snap.progress == 100 and snap.seed == 11 and set(snap.timings) >= {"denoising", "vae_decode"}
    assert engine.get(job.id) is None  # finished jobs are not kept by the engine (bounded memory)


def test_an_unset_seed_is_drawn_at_submit_and_reproduces(engine):
    first = engine.submit(GenerationRequest("a kite", **SMALL))
    seed = first.request.seed
    assert isinstance(seed, int) and first.snapshot().seed == seed  # known before the job runs
    again = engine.submit(GenerationRequest("a kite", seed=seed, **SMALL))
    assert first.wait(60) and again.wait(60)
    np.testing.assert_array_equal(first.result.frames, again.result.frames)


def test_progress_is_reported_after_every_step(engine):
    seen = []

    class Record(JobListener):
        def on_step(self, job, step, total, seconds):
            seen.append((step, total, job.snapshot().progress))
            assert seconds >= 0

    job = engine.submit(GenerationRequest("p", seed=1, size=(32, 32), num_frames=5, num_inference_steps=4),
                        listener=Record())
    assert job.wait(60) and job.status == COMPLETED
    assert seen == [(1, 4, 25), (2, 4, 50), (3, 4, 75), (4, 4, 99)]


def test_cancel_stops_a_running_job_within_one_step_and_the_next_runs(engine):
    gate = Gate()
    running = engine.submit(GenerationRequest("long", seed=2, size=(32, 32), num_frames=5, num_inference_steps=50),
                            listener=gate)
    queued = engine.submit(GenerationRequest("next", seed=3, **SMALL))
    assert gate.entered.wait(60)
    assert engine.cancel(running.id) is running
    gate.release.set()
    assert running.wait(60) and running.status == CANCELLED
    assert gate.steps == [(1, 50)]  # cancelled while in step 1: no further step ran
    snap = running.snapshot()
    assert (snap.cancel_step, snap.step) == (1, 1)  # asked for after step 1, stopped there
    assert queued.wait(60) and queued.status == COMPLETED


def test_a_queued_job_that_is_cancelled_never_runs(engine):
    gate = Gate()
    blocker = engine.submit(GenerationRequest("block", seed=2, **SMALL), listener=gate)
    assert gate.entered.wait(60)
    queued = engine.submit(GenerationRequest("never", seed=3, **SMALL))
    engine.cancel(queued.id)
    assert queued.wait(1) and queued.status == CANCELLED and queued.snapshot().started_at is None
    assert engine.queue_depth == 0
    gate.release.set()
    assert blocker.wait(60) and blocker.status == COMPLETED


def test_a_full_queue_refuses_at_once(engine):
    gate = Gate()
    engine.submit(GenerationRequest("block", seed=2, **SMALL), listener=gate)
    assert gate.entered.wait(60)
    waiting = [engine.submit(GenerationRequest("w", seed=i, **SMALL)) for i in range(4)]
    with pytest.raises(QueueFull, match="queue is full"):
        engine.submit(GenerationRequest("one too many", **SMALL))
    gate.release.set()
    assert all(j.wait(60) and j.status == COMPLETED for j in waiting)


@pytest.mark.parametrize("fields,field,match", [
    (dict(prompt=""), "prompt", "non-empty"),
    (dict(prompt="x" * 2001), "prompt", "at most 2000 characters"),
    (dict(size=(30, 32)), "size", "multiples of 16"),
    (dict(size=(4096, 32)), "size", "at most 1920"),
    (dict(num_frames=6), "num_frames", "4n\\+1"),
    (dict(num_frames=245), "num_frames", "at most 241"),
    (dict(num_inference_steps=0), "num_inference_steps", ">= 1"),
    (dict(num_inference_steps=201), "num_inference_steps", "at most 200"),
    (dict(guidance_scale=-1.0), "guidance_scale", ">= 0"),
    (dict(guidance_scale=float("nan")), "guidance_scale", "finite"),
    (dict(shift=0), "shift", "> 0"),
    (dict(seed=-1), "seed", "2\\*\\*63"),
    (dict(solver="ddim"), "solver", "unipc"),
    (dict(cache="warpcache:1"), "cache", "teacache"),
    (dict(cfg="no"), "cfg", "true, false"),
    (dict(sampling="turbo"), "sampling", "distill-4step"),
    (dict(sampling="distill-4step", num_inference_steps=8), "num_inference_steps", "must be 4"),
])
def test_bad_fields_are_refused_naming_the_field(engine, fields, field, match):
    request = GenerationRequest(**{"prompt": "ok", **fields})
    with pytest.raises(RequestError, match=match) as err:
        engine.submit(request)
    assert err.value.field == field and field in str(err.value)
    assert engine.queue_depth == 0


def test_a_failing_job_is_failed_and_the_worker_goes_on(engine):
    # MagCache needs a calibration; the tiny preset has none: the job fails, the next one runs.
    bad = engine.submit(GenerationRequest("p", seed=1, cache="magcache", **SMALL))
    good = engine.submit(GenerationRequest("p", seed=1, **SMALL))
    assert bad.wait(60) and bad.status == FAILED
    assert bad.snapshot().error.code in ("invalid_request", "generation_failed")
    assert good.wait(60) and good.status == COMPLETED


def test_generate_runs_in_the_callers_thread_and_stops_when_the_callback_raises(engine):
    def stop_after_two(done, total):
        if done == 2:
            raise GenerationCancelled()

    with pytest.raises(GenerationCancelled):
        engine.generate(GenerationRequest("p", seed=1, size=(32, 32), num_frames=5, num_inference_steps=6),
                        on_step=stop_after_two)
    assert engine.generate(GenerationRequest("p", seed=1, **SMALL)).frames.shape == (5, 32, 32, 3)


def test_warmup_and_close(pipe):
    engine = Engine(pipe, max_queue=2)
    assert engine.warmup() > 0 and engine.warmup_seconds > 0
    engine.close()
    with pytest.raises(EngineClosed):
        engine.submit(GenerationRequest("late", **SMALL))


@pytest.mark.parametrize("model", ["tiny-i2v", "tiny-flf2v"])
def test_an_image_conditioned_model_warms_up(model):
    """The warm-up (on by default in `serve`) was a text-only, one-frame request: an i2v server
    failed to start ("image is required") and an flf2v one too ("num_frames must be >= 2")."""
    engine = Engine(WanPipeline.from_pretrained(model, device="cpu", dtype="fp32"))
    try:
        assert engine.warmup() > 0
    finally:
        engine.close()


def test_max_queue_is_checked():
    with pytest.raises(ValueError, match="max_queue must be an integer >= 1"):
        Engine(object(), max_queue=0)


def test_cfg_is_resolved_and_cfg_false_is_refused_at_submit_under_cfg_parallelism(pipe):
    """The job reports the cfg it runs with (the sampling preset's when unset); a server with CFG
    parallelism refuses a one-branch request at once instead of failing it on every rank."""
    engine = Engine(pipe)
    assert engine.resolve(GenerationRequest("x")).cfg is True
    assert engine.resolve(GenerationRequest("x", sampling="distill-4step")).cfg is False
    assert engine.resolve(GenerationRequest("x", sampling="distill-4step", cfg=True)).cfg is True
    cfg_parallel = SimpleNamespace(mesh=SimpleNamespace(rank=0, cfg_size=2), is_parallel=False, config=pipe.config,
                                   export_limits=None)
    engine = Engine(cfg_parallel)  # only resolve is called: a stand-in for a rank of a --cfg-parallel launch
    for request in (GenerationRequest("x", cfg=False), GenerationRequest("x", sampling="distill-4step")):
        with pytest.raises(RequestError, match="cfg-parallel") as err:
            engine.resolve(request)
        assert err.value.field == "cfg"
    assert engine.resolve(GenerationRequest("x")).cfg is True


def test_fbcache_on_an_export_without_its_graphs_is_refused_at_submit(pipe):
    """An export from before the split step cannot run FBCache: the server refuses the request
    with a 422 naming `cache`, instead of failing the job once it runs."""
    exported = SimpleNamespace(mesh=SimpleNamespace(rank=0, cfg_size=1), is_parallel=False, config=pipe.config,
                               export_limits=None,
                               dit=SimpleNamespace(has_first_block_steps=False))
    engine = Engine(exported)  # only resolve is called: a stand-in for a pipeline on such an export
    with pytest.raises(RequestError, match="predates them; export it again") as err:
        engine.resolve(GenerationRequest("x", cache="fbcache:0.1"))
    assert err.value.field == "cache"
    assert engine.resolve(GenerationRequest("x", cache="magcache:0.1")).cache == "magcache:0.1"
    assert Engine(pipe).resolve(GenerationRequest("x", cache="fbcache:0.1")).cache == "fbcache:0.1"
