"""I2V and FLF2V under Ulysses 2, ring 2 and CFG parallelism on spawned gloo ranks give the
one-process video.

Every rank builds the tiny-i2v / tiny-flf2v pipeline twice from the same seeded preset weights:
once alone (the one-process oracle, in-process) and once on the mesh, and generates from the same
images. The image conditioning enters every rank (rank 0's CLIP features and conditioning latents
are broadcast), so a rank that conditioned on other values, or lost the image rows of the
cross-attention, would be off by O(1). Tolerance: the latents of a parallel run differ from one
process only in fp32 summation order (1e-5 relative, as test_dit_parallel.py); the 48x48 request
has 27 latent tokens, so every sequence-parallel layout pads and masks.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch

from sp_harness import rel_l2, run_ranks_ok
from wan_engine.parallel import ParallelConfig, ParallelMesh
from wan_engine.pipelines.t2v import WanPipeline

REL_TOL = 1e-5
LAYOUTS = {"ulysses2": ParallelConfig(ulysses=2), "ring2": ParallelConfig(ring=2), "cfg2": ParallelConfig(cfg=2)}
MODELS = ("tiny-i2v", "tiny-flf2v")


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:40, 0:40] / 40
    return (np.stack([np.sin(5 * x + p) * np.cos(3 * y) for p in rng.uniform(0, 6, 3)], -1) * 120 + 128).astype(np.uint8)


def _latents(pipe: WanPipeline, model: str) -> torch.Tensor:
    kw = dict(image=_image(1), last_image=_image(2) if model == "tiny-flf2v" else None)
    req = pipe.make_request("a lighthouse at dusk", size=(48, 48), num_frames=9, steps=3, seed=4, **kw)
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        return pipe.denoise(req, context, context_null, image=pipe.encode_image(req))


def i2v_suite(rank: int, world_size: int) -> dict:
    results = {}
    for model in MODELS:
        single = _latents(WanPipeline.from_pretrained(model), model)
        for name, config in LAYOUTS.items():
            mesh = ParallelMesh.build(config, timeout=timedelta(seconds=60))
            pipe = WanPipeline.from_pretrained(model, parallel=config, mesh=mesh)
            results[f"{model}-{name}"] = rel_l2(_latents(pipe, model), single)
    return results


@pytest.fixture(scope="module")
def launch():
    return run_ranks_ok(2, i2v_suite, deadline_s=300.0)


@pytest.mark.parametrize("case", [f"{m}-{l}" for m in MODELS for l in LAYOUTS])
def test_every_rank_gets_the_one_process_latents(launch, case):
    errors = [ranks[case] for ranks in launch]
    print(f"{case}: rel L2 per rank {['%.1e' % e for e in errors]}")
    assert max(errors) <= REL_TOL
