"""Two-expert (Wan2.2 T2V-A14B and I2V-A14B) models on spawned gloo ranks: both experts get the layout (sequence
parallelism, CFG parallelism, the weight split), and the latents are the single-process ones.

Bounds: CFG parallelism runs each branch as the single process's separate (cfg_batch=False)
forward does, so it is held to equality with that. Ulysses may change the fp32 summation order of
the attention; the bound is 1e-5 relative L2 after 6 solver steps (the one-DiT executor's bound for
GEMM-order noise). Measured: 0 (each rank computes whole heads over the whole sequence here). The weight split moves bytes, not arithmetic: equal to the unsplit
Ulysses run bit for bit.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch

from sp_harness import run_ranks_ok
from wan_engine.cache import CacheConfig, Calibration
from wan_engine.parallel import ParallelConfig, ParallelMesh
from wan_engine.pipelines.t2v import WanPipeline

MODEL = "tiny-a14b"
FBCACHE = "fbcache:0.5"  # reuses some steps of each expert on these weights
MAGCACHE = "magcache:0.5,K=2,retention=0"
ONES = Calibration("ones", "test", magcache=((1.0,) * 6, (1.0,) * 6))  # no error accrues: reuse up to K in a row
REQUEST = dict(size=(48, 48), num_frames=9, steps=6, seed=3)  # 27 tokens: Ulysses 2 pads and masks


def _latents(pipe: WanPipeline, cache: str | None = None, calibration: Calibration | None = None):
    """The final latents of the request (with `cache`: and the cache's decisions)."""
    image = None
    if pipe.config.dit.model_type == "i2v":  # Wan2.2 I2V-A14B: no CLIP, the image latents only
        image = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    req = pipe.make_request("a red kite above a grey sea", image=image, **REQUEST,
                            cache=None if cache is None else CacheConfig.parse(cache))
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        condition = None if image is None else pipe.encode_image(req)
        step_cache = pipe.make_step_cache(req, calibration)
        latents = pipe.denoise(req, context, context_null, step_cache=step_cache, image=condition)
    return latents if cache is None else (latents, step_cache.decisions)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def experts_worker(rank: int, world_size: int) -> dict:
    single = _latents(WanPipeline.from_pretrained(MODEL))
    separate = _latents(WanPipeline.from_pretrained(MODEL, cfg_batch=False))
    out = {}
    ulysses = ParallelConfig(ulysses=2)
    mesh = ParallelMesh.build(ulysses, timeout=timedelta(seconds=60))
    whole = WanPipeline.from_pretrained(MODEL, parallel=ulysses, mesh=mesh)
    split = WanPipeline.from_pretrained(MODEL, parallel=ulysses, mesh=mesh, shard_weights=True)
    a, b = _latents(whole), _latents(split)
    out["ulysses_rel"] = _rel(a, single)
    out["shard_equal"] = bool(torch.equal(a, b))
    out["both_sharded"] = all(d.shard_plan is not None for d in (whole.dit, whole.low_noise_dit))
    out["both_split"] = all(d.weight_shards is not None for d in (split.dit, split.low_noise_dit))
    cfg = ParallelConfig(cfg=2)
    branches = WanPipeline.from_pretrained(MODEL, parallel=cfg, mesh=ParallelMesh.build(cfg))
    out["cfg_equal"] = bool(torch.equal(_latents(branches), separate))
    (cached, decided), (alone, decided_alone) = _latents(whole, FBCACHE), _latents(
        WanPipeline.from_pretrained(MODEL), FBCACHE)
    out["fbcache_rel"], out["fbcache_decisions"] = _rel(cached, alone), (decided, decided_alone)
    (cached, decided), (alone, decided_alone) = _latents(whole, MAGCACHE, ONES), _latents(
        WanPipeline.from_pretrained(MODEL), MAGCACHE, ONES)
    out["magcache_rel"], out["magcache_decisions"] = _rel(cached, alone), (decided, decided_alone)
    i2v = WanPipeline.from_pretrained("tiny-i2v-a14b", parallel=ulysses, mesh=mesh)
    out["i2v_rel"] = _rel(_latents(i2v), _latents(WanPipeline.from_pretrained("tiny-i2v-a14b")))
    return out


@pytest.fixture(scope="module")
def results():
    return run_ranks_ok(2, experts_worker, deadline_s=300.0)


def test_ulysses_runs_both_experts_sharded(results):
    for r in results:
        assert r["both_sharded"]
        print(f"rank: ulysses 2 vs one process, rel L2 {r['ulysses_rel']:.2e}")
        assert r["ulysses_rel"] <= 1e-5, r


def test_the_weight_split_covers_both_experts_and_changes_nothing(results):
    for r in results:
        assert r["both_split"] and r["shard_equal"], r


def test_ulysses_runs_the_i2v_experts(results):
    """The conditioning (the row-split VAE encode, rank 0's latents broadcast; no CLIP features to
    share) and both i2v experts under Ulysses 2."""
    for r in results:
        print(f"i2v-a14b: ulysses 2 vs one process, rel L2 {r['i2v_rel']:.2e}")
        assert r["i2v_rel"] <= 1e-5, r


def test_fbcache_decides_alike_under_ulysses(results):
    """FBCache over both experts on 2 ranks: the decisions of one process (reduced over the group,
    each expert's residuals kept apart) and its latents within the Ulysses bound."""
    for r in results:
        decided, alone = r["fbcache_decisions"]
        assert decided == alone and any(not d for branch in decided for d in branch), r
        assert r["fbcache_rel"] <= 1e-5, r


def test_two_expert_magcache_under_ulysses(results):
    """MagCache's two-expert schedule on 2 ranks: one process's decisions (C r r from each expert's
    first step), its latents within the Ulysses bound."""
    for r in results:
        decided, alone = r["magcache_decisions"]
        assert decided == alone and any(not d for branch in decided for d in branch), r
        assert decided[0][0] and not decided[0][1], decided
        assert r["magcache_rel"] <= 1e-5, r


def test_cfg_parallel_equals_the_separate_branches(results):
    assert all(r["cfg_equal"] for r in results), results
