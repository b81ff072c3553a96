"""The tiled VAE decode shared over gloo ranks gives the one-process tiled video bit for bit, and
composes with the pipeline under sequence parallelism (tiling, and the bf16 decode).

Why bit for bit: every rank decodes whole tiles with the same functions as one process, and rank 0
blends them in the same index order, so each output pixel is the same sum in the same order. The
bf16 decode under ranks runs the row-split decode on the bf16 copy: the same math per row in
another convolution blocking, so its frames may differ from one process's bf16 decode by rounding
(bounded here at 2 uint8 levels; the bf16 decode itself is ~35 dB from fp32, tests/test_vae_static.py).
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch

from sp_harness import run_ranks_ok
from wan_engine.configs import VAEConfig
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel import ParallelConfig, ParallelMesh
from wan_engine.reference.vae import WanVAE
from wan_engine.vae.decode import VAEDecodeOptions
from wan_engine.vae.tiling import TilePlan, tiled_decode

PLAN = TilePlan((4, 4), overlap=2)  # 9 tiles on an 8x8 latent grid: 3 ranks get 3, 2 ranks 5 and 4
REQUEST = dict(prompt="a red kite above a grey sea", size=(64, 64), num_frames=5, steps=2, seed=3)


def _vae() -> WanVAE:
    vae = WanVAE(VAEConfig(base_dim=8)).eval()
    vae.load_state_dict(random_state_dict(vae, seed=1))
    return vae


def tiles_suite(rank: int, world_size: int) -> dict:
    import torch.distributed as dist

    from wan_engine.parallel.vae_tiles import agree_on_plan, parallel_tiled_decode

    vae = _vae()
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = tiled_decode(vae, latents, PLAN)
    world = dist.group.WORLD
    on_rank0 = parallel_tiled_decode(vae, latents, PLAN, world, output="rank0")
    everywhere = parallel_tiled_decode(vae, latents, PLAN, world, output="all")
    mine = TilePlan((4 + rank, 5), overlap=3 - rank % 2)  # each rank asks for another plan
    agreed = agree_on_plan(mine, (8, 8), world, torch.device("cpu"))
    return {"rank0": None if on_rank0 is None else bool(torch.equal(on_rank0, expected)),
            "all": bool(torch.equal(everywhere, expected)), "agreed": (agreed.tile, agreed.overlap),
            "untiled": agree_on_plan(TilePlan(), (8, 8), world, torch.device("cpu")).tile}


@pytest.mark.parametrize("world", [2, 3])
def test_the_shared_tiled_decode_is_the_one_process_tiled_decode(world):
    results = run_ranks_ok(world, tiles_suite, deadline_s=240.0)
    assert results[0]["rank0"] is True and all(r["rank0"] is None for r in results[1:])
    assert all(r["all"] for r in results)
    assert all(r["agreed"] == ((4, 5), 2) for r in results), results  # the smallest of each
    assert all(r["untiled"] is None for r in results)


def pipeline_suite(rank: int, world_size: int) -> dict:
    from wan_engine.pipelines.t2v import WanPipeline

    out = {}
    for name, options in (("tiled", VAEDecodeOptions(tiling=PLAN)), ("bf16", VAEDecodeOptions(dtype="bf16"))):
        single = WanPipeline.from_pretrained("tiny", vae_decode=options).generate(**REQUEST)
        mesh = ParallelMesh.build(ParallelConfig(ulysses=2), timeout=timedelta(seconds=60))
        pipe = WanPipeline.from_pretrained("tiny", vae_decode=options, parallel=mesh.config, mesh=mesh)
        frames = pipe.generate(**REQUEST)
        out[name] = None if frames is None else int(np.abs(frames.astype(int) - single.astype(int)).max())
        out[name + "_plan"] = None if pipe.vae_decoder.last_plan is None else pipe.vae_decoder.last_plan.tile
    return out


def test_the_pipeline_decodes_tiled_and_bf16_under_sequence_parallelism():
    results = run_ranks_ok(2, pipeline_suite, deadline_s=300.0)
    print(results)
    assert results[0]["tiled"] == 0  # bit for bit
    assert results[0]["bf16"] <= 2
    assert results[1]["tiled"] is None and results[1]["bf16"] is None  # only rank 0 gets frames
    assert all(r["tiled_plan"] == PLAN.tile and r["bf16_plan"] is None for r in results)
