"""An exported engine under CFG parallelism on 2 spawned gloo ranks: each rank runs its CFG branch
through the onnxruntime graphs, and rank 0 decodes through the exported decoder. The video equals
the one-process run of the same export. Sequence parallelism with an export is refused by name.

Tolerance: one level. CFG parallelism runs each branch as its own batch-1 step instead of one
batch-2 step, so the fp32 sums are ordered differently (~1e-6 relative on the guided velocity;
see test_pipeline_parallel.py). A branch that ran the wrong text or step is off by far more.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from sp_harness import run_ranks_ok
from wan_engine.cache import CacheConfig
from wan_engine.parallel import ParallelConfig, ParallelMesh
from wan_engine.pipelines.t2v import WanPipeline

pytestmark = pytest.mark.onnx_export  # every test here exports (conftest skips them on a torch that cannot)

REQUEST = dict(prompt="a red kite above a grey sea", size=(48, 32), num_frames=9, steps=5, seed=3)
CACHES = {"uncached": None, "magcache": "magcache:0.3,K=3,retention=0.1"}


def export_suite(rank: int, world_size: int, folder: str) -> dict:
    engine = f"onnx:{folder}"
    single = WanPipeline.from_pretrained("tiny", device="cpu", engine=engine)
    config = ParallelConfig(cfg=2)
    pipe = WanPipeline.from_pretrained("tiny", device="cpu", engine=engine, parallel=config,
                                       mesh=ParallelMesh.build(config, timeout=timedelta(seconds=60)))
    results = {}
    for name, spec in CACHES.items():
        cache = None if spec is None else CacheConfig.parse(spec, calibration="t2v-1.3B")
        a, b = single.run(**REQUEST, cache=cache), pipe.run(**REQUEST, cache=cache)
        results[name] = {"frames": b.frames is not None}
        if rank == 0:
            results[name]["levels"] = int(np.abs(a.frames.astype(int) - b.frames.astype(int)).max())
            results[name]["computed"] = (None if cache is None
                                         else (a.cache.computed, b.cache.computed))
    sp = ParallelConfig(ulysses=2)
    try:
        WanPipeline.from_pretrained("tiny", device="cpu", engine=engine, parallel=sp,
                                    mesh=ParallelMesh.build(sp, timeout=timedelta(seconds=60)))
        results["sp"] = "no error"
    except ValueError as err:
        results["sp"] = str(err)
    return results


@pytest.fixture(scope="module")
def launch(tiny_export):
    folder, _ = tiny_export  # conftest: the tiny DiT and VAE decoder, exported once per run
    return run_ranks_ok(2, export_suite, str(folder), deadline_s=300.0)


@pytest.mark.parametrize("cache", list(CACHES))
def test_cfg_parallel_through_the_export_is_the_one_process_video(launch, cache):
    rank0, rank1 = (ranks[cache] for ranks in launch)
    assert rank0["frames"] and not rank1["frames"]  # rank 0 decodes and returns the video
    print(f"{cache}: max {rank0['levels']} level(s) from the one-process export run")
    assert rank0["levels"] <= 1
    if rank0["computed"] is not None:
        one, two = rank0["computed"]
        assert one == two and not all(one[0])


def test_sequence_parallelism_with_an_export_is_refused_by_name(launch):
    for ranks in launch:
        assert "needs engine='executor'; engine='onnx:" in ranks["sp"] and "runs each step whole" in ranks["sp"]
