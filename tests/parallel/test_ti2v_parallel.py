"""Wan2.2 TI2V image-to-video under sequence parallelism on spawned gloo ranks: frame 0's tokens run
at their own timestep on whichever ranks hold them. Ring 3 over 2 latent frames of 3x3 tokens
(18 tokens, 6 per rank) puts frame 0 on rank 0 (its whole slice), on half of rank 1's slice, and
nowhere on rank 2's: the three cases of `WanExecutor._first_frame_rows`. CFG parallelism gives each
rank one branch. The latents equal the single-process ones to the executor's parallel bound
(1e-5 relative L2: the ring's blockwise softmax reorders fp32 sums).
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch

from sp_harness import rel_l2, run_ranks_ok
from wan_engine.parallel import ParallelConfig, ParallelMesh
from wan_engine.pipelines.t2v import WanPipeline

MODEL = "tiny-ti2v"
REQUEST = dict(size=(96, 96), num_frames=5, steps=4, seed=9)  # latents 2 x 6 x 6: 2 x 3 x 3 tokens


def _latents(pipe: WanPipeline) -> tuple[torch.Tensor, int]:
    image = (np.random.default_rng(2).random((96, 96, 3)) * 255).astype(np.uint8)
    req = pipe.make_request("a red kite above a grey sea", image=image, **REQUEST)
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        latents = pipe.denoise(req, context, context_null, image=pipe.encode_image(req))
    return latents


def _frame0_rows(pipe: WanPipeline) -> int:
    dit = pipe.dit
    patches, rope = dit.tokens_in(torch.zeros(1, 48, 2, 6, 6), torch.zeros(1, 2))
    return dit._first_frame_rows(rope, rope.seq_len // dit.shard_plan.degree)


def ti2v_worker(rank: int, world_size: int) -> dict:
    single = _latents(WanPipeline.from_pretrained(MODEL))
    ring = ParallelConfig(ring=3)
    pipe = WanPipeline.from_pretrained(MODEL, parallel=ring, mesh=ParallelMesh.build(ring, timeout=timedelta(seconds=60)))
    return {"ring_rel": rel_l2(_latents(pipe), single), "frame0_rows": _frame0_rows(pipe)}


def cfg_worker(rank: int, world_size: int) -> dict:
    separate = _latents(WanPipeline.from_pretrained(MODEL, cfg_batch=False))
    cfg = ParallelConfig(cfg=2)
    pipe = WanPipeline.from_pretrained(MODEL, parallel=cfg, mesh=ParallelMesh.build(cfg))
    return {"cfg_equal": bool(torch.equal(_latents(pipe), separate))}


@pytest.fixture(scope="module")
def ring_results():
    return run_ranks_ok(3, ti2v_worker, deadline_s=300.0)


def test_ring3_first_frame_rows_land_where_frame0_is(ring_results):
    assert [r["frame0_rows"] for r in ring_results] == [6, 3, 0]


def test_ring3_matches_one_process(ring_results):
    for r in ring_results:
        print(f"ring 3 vs one process: rel L2 {r['ring_rel']:.2e}")
        assert r["ring_rel"] <= 1e-5


def test_cfg_parallel_equals_separate_branches():
    for r in run_ranks_ok(2, cfg_worker, deadline_s=300.0):
        assert r["cfg_equal"]
