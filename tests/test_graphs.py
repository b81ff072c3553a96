"""CUDA-graph replay: the CPU-testable parts (the replay plumbing through a stand-in capture, the
eager fallback when a capture raises, off without CUDA) and, on a GPU, replay against eager."""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import wan_engine
from gpu_image import without_prompt_cleaning
from wan_engine.cache import CacheConfig
from wan_engine.graphs import GraphReplayer

REQUEST = dict(prompt="a red kite above a grey sea", size=(48, 48), num_frames=9, steps=6, seed=4)
CACHE = CacheConfig.parse("magcache:0.3,K=3,retention=0.1", calibration="t2v-1.3B")
# FBCache decides between the calls of a step; at 1.0 on this request its branches both compute,
# both reuse, and disagree (each branch then replays its own batch-1 graph) at different steps.
FIRST_BLOCK = CacheConfig("fbcache", 1.0)


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")


def test_graphs_are_off_on_the_cpu_with_the_reason(pipe):
    assert not pipe.graphs.active and "need a CUDA device" in pipe.graphs.disabled_reason
    assert "disabled" in GraphReplayer("cuda", enabled=False).disabled_reason


@pytest.mark.parametrize("cache", [None, CACHE, FIRST_BLOCK], ids=["uncached", "magcache", "fbcache"])
def test_replays_through_static_inputs_equal_eager(pipe, cache):
    """A stand-in capture (no graph recorded; a replay re-runs the function on its static inputs)
    exercises the key, warm-up, static-input copies and output clones on the CPU."""
    eager = pipe.run(**REQUEST, cache=cache)
    pipe.graphs = GraphReplayer("cpu", capture=contextlib.nullcontext)
    try:
        replayed = pipe.run(**REQUEST, cache=cache)
        assert pipe.graphs.active and pipe.graphs.replays > 0
    finally:
        pipe.graphs = GraphReplayer("cpu")
    assert np.array_equal(eager.frames, replayed.frames)
    if cache is not None:
        assert eager.cache.computed == replayed.cache.computed
        assert not all(eager.cache.computed[0]) and len(set(eager.cache.computed[0])) == 2


def test_graphs_are_captured_again_once_the_dit_moved(pipe, monkeypatch):
    """With offload the DiT leaves the GPU after denoising and comes back on new memory; a graph
    replays on the addresses it was captured with, so the pipeline drops its graphs when the DiT
    moves. On the CPU nothing moves: `place` reports a move of the DiT to stand in for one."""
    from wan_engine.pipelines import t2v

    eager = pipe.run(**REQUEST, cache=None)
    pipe.graphs = GraphReplayer("cpu", capture=contextlib.nullcontext)
    try:
        pipe.run(**REQUEST, cache=None)
        held = pipe.graphs.captured
        real_place = t2v.place
        monkeypatch.setattr(t2v, "place", lambda module, device: module is pipe.dit or real_place(module, device))
        pipe._place("denoising")
        assert held > 0 and pipe.graphs.captured == 0
        monkeypatch.undo()
        again = pipe.run(**REQUEST, cache=None)
        assert pipe.graphs.captured == held
    finally:
        pipe.graphs = GraphReplayer("cpu")
    assert np.array_equal(eager.frames, again.frames)


def test_a_capture_that_raises_falls_back_to_eager_and_says_why_once(pipe, caplog):
    class Refuses:
        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing")

        def __exit__(self, *exc):
            return False

    eager = pipe.run(**REQUEST, cache=None)
    pipe.graphs = GraphReplayer("cpu", capture=Refuses)
    try:
        with caplog.at_level(logging.WARNING, logger="wan_engine.graphs"):
            fallback = pipe.run(**REQUEST, cache=None)
            again = pipe.run(**REQUEST, cache=None)
        reason = pipe.graphs.disabled_reason
    finally:
        pipe.graphs = GraphReplayer("cpu")
    assert np.array_equal(eager.frames, fallback.frames) and np.array_equal(eager.frames, again.frames)
    assert "operation not permitted when stream is capturing" in reason and "running eagerly" in reason
    assert sum("CUDA graphs off" in r.message for r in caplog.records) == 1


@pytest.fixture(scope="module")
def gpu_pipes():
    """(graphed, eager) tiny bf16 pipelines on the GPU, built once for the cases below."""
    def build(graphs):
        return without_prompt_cleaning(wan_engine.WanPipeline.from_pretrained("tiny", device="cuda", dtype="bf16",
                                                                              cuda_graphs=graphs))
    return build(True), build(False)


@pytest.mark.gpu
@pytest.mark.parametrize("cache", [None, CACHE, FIRST_BLOCK], ids=["uncached", "magcache", "fbcache"])
def test_graph_replay_equals_eager_on_the_gpu(gpu_pipes, cache):
    """Same kernels, same inputs: the replayed steps give the eager video bit for bit."""
    graphed, eager = gpu_pipes
    a, b = graphed.run(**REQUEST, cache=cache), eager.run(**REQUEST, cache=cache)
    assert graphed.graphs.active and graphed.graphs.replays > 0, graphed.graphs.disabled_reason
    assert np.array_equal(a.frames, b.frames)


@pytest.mark.gpu
@pytest.mark.parametrize("cache", [None, FIRST_BLOCK], ids=["uncached", "fbcache"])
def test_two_expert_graph_replay_equals_eager_on_the_gpu(cache):
    """Wan2.2 A14B's two experts share one replayer: each expert's steps replay its own graphs (the
    key holds the DiT), so the video is the eager one bit for bit."""
    def build(graphs):
        return without_prompt_cleaning(wan_engine.WanPipeline.from_pretrained(
            "tiny-a14b", device="cuda", dtype="bf16", cuda_graphs=graphs))

    graphed, eager = build(True), build(False)
    request = {**REQUEST, "steps": 8}  # 4 steps on each expert
    a, b = graphed.run(**request, cache=cache), eager.run(**request, cache=cache)
    assert graphed.graphs.active and graphed.graphs.replays > 0, graphed.graphs.disabled_reason
    assert np.array_equal(a.frames, b.frames)


def test_generate_reports_graphs_and_the_vae_decode(tmp_path, capsys):
    from wan_engine.cli import main

    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny", "--prompt", "a kite", "--steps", "2", "--size", "64x64",
                 "--frames", "5", "--vae-tiling", "32x32", "--vae-dtype", "bf16", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cuda graphs: off (CUDA graphs need a CUDA device" in printed
    assert "vae decode: bf16, tiling 4x4 latent tiles, overlap 3" in printed and out.is_file()
    assert main(["generate", "--model", "tiny", "--prompt", "a kite", "--vae-tiling", "30x32",
                 "--output", str(tmp_path / "w.mp4")]) == 2
    assert "--vae-tiling HxW must be positive multiples of 8 pixels" in capsys.readouterr().err
