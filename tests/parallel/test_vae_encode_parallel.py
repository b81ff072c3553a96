"""Row-parallel VAE encode on 2 and 4 gloo ranks against the single-process chunked `WanVAE.encode`.

Every rank encodes the same seeded video both ways on the CPU. A wrong halo, a misplaced slab, a
downsample reading the wrong row or a lost cache frame changes the latents by O(0.1).

Tolerances are those of the parallel decode (test_vae_parallel.py), for the same reason. oneDNN
picks its conv micro-kernels by tensor shape, and a slab is shorter than the frame, so fp32 sums may
be reordered. float64 proves the function is the same (relative L2 < 1e-12). float32, the VAE's
dtype, is held to relative L2 < 1e-5 and max abs < 1e-4 (latents are of order 1).
Bitwise equality is printed, not required.
"""
from __future__ import annotations

import pytest
import torch

from sp_harness import run_ranks_ok
from test_vae_parallel import ATTN_VAE, TOLERANCES, peak_cpu_bytes
from wan_engine.configs import TINY_VAE, TINY_VAE22
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel.vae_encode import parallel_vae_encode
from wan_engine.reference.vae import WanVAE

# attn: attention in a downsampling stage too; wan22: the Wan2.2 VAE (2x2 pixel patch, stage shortcuts)
CONFIGS = {"tiny": TINY_VAE, "attn": ATTN_VAE, "wan22": TINY_VAE22}
# name: (vae, batch, frames, latent rows, latent cols, dtype). 5 latent rows over 2 ranks are 3+2,
# over 4 ranks 2+1+1+1: odd slabs at the latent level, even ones at every resolution above it.
CASES = {
    2: [
        ("tiny_h5_w3_f9", "tiny", 1, 9, 5, 3, torch.float32),
        ("attn_b2_h3_w3_f5", "attn", 2, 5, 3, 3, torch.float32),
        ("tiny_h5_w2_f5_fp64", "tiny", 1, 5, 5, 2, torch.float64),
        ("wan22_h5_w3_f9", "wan22", 1, 9, 5, 3, torch.float32),
    ],
    4: [
        ("tiny_h5_w4_f5", "tiny", 1, 5, 5, 4, torch.float32),
        ("attn_h6_w3_f9", "attn", 1, 9, 6, 3, torch.float32),
        ("tiny_h4_w3_f1", "tiny", 1, 1, 4, 3, torch.float32),
        ("attn_h5_w2_f5_fp64", "attn", 1, 5, 5, 2, torch.float64),
        ("wan22_h5_w2_f5_fp64", "wan22", 1, 5, 5, 2, torch.float64),
    ],
}
MEMORY_CASE = ("tiny", 1, 5, 12, 4)  # 96x32 pixels, 5 frames


def _vae(name: str) -> WanVAE:
    vae = WanVAE(CONFIGS[name]).eval()
    vae.load_state_dict(random_state_dict(vae, seed=4))
    return vae


def _video(batch, frames, rows, cols, stride=8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 * rows + 10 * cols + frames + batch)
    return torch.rand(batch, 3, frames, stride * rows, stride * cols, generator=gen) * 2 - 1


def encode_worker(rank: int, world_size: int) -> dict:
    import torch.distributed as dist

    world = dist.group.WORLD
    results = {}
    vaes = {name: _vae(name) for name in CONFIGS}
    for name, vae_name, batch, frames, rows, cols, dtype in CASES[world_size]:
        vae = vaes[vae_name].to(dtype)
        video = _video(batch, frames, rows, cols, vae.config.spatial_stride).to(dtype)
        with torch.no_grad():
            ref = vae.encode(video)
        got = parallel_vae_encode(vae, video, world)
        results[name] = {
            "shape_ok": got.shape == ref.shape and got.dtype == ref.dtype,
            "equal": bool(torch.equal(got, ref)),
            "max_abs": float((got - ref).abs().max()),
            "rel_l2": float((got - ref).double().norm() / ref.double().norm()),
        }
    try:
        parallel_vae_encode(vaes["tiny"].float(), _video(1, 1, world_size - 1, 2), world)
        results["too_short"] = "no error"
    except ValueError as err:
        results["too_short"] = str(err)

    vae_name, batch, frames, rows, cols = MEMORY_CASE
    vae, video = vaes[vae_name].float(), _video(batch, frames, rows, cols)
    parallel_vae_encode(vae, video, world)  # warm-up: first-call allocations
    results["peak_parallel"] = peak_cpu_bytes(lambda: parallel_vae_encode(vae, video, world))
    dist.barrier()
    if rank == 0:
        with torch.no_grad():
            results["peak_single"] = peak_cpu_bytes(lambda: vae.encode(video))
    return results


@pytest.fixture(scope="module")
def launches():
    return {world: run_ranks_ok(world, encode_worker) for world in CASES}


PARAMS = [(world, case[0]) for world, cases in CASES.items() for case in cases]


@pytest.mark.parametrize("world,name", PARAMS, ids=[f"{w}ranks-{n}" for w, n in PARAMS])
def test_parallel_encode_equals_single_process(launches, world, name):
    dtype = next(case[-1] for case in CASES[world] if case[0] == name)
    rel_tol, abs_tol = TOLERANCES[dtype]
    for rank, results in enumerate(launches[world]):
        got = results[name]
        assert got["shape_ok"], (rank, name)
        where = (f"{world} ranks, rank {rank}, {name}: rel L2 {got['rel_l2']:.2e}, max abs {got['max_abs']:.2e}, "
                 f"bitwise equal {got['equal']}")
        assert got["rel_l2"] < rel_tol and got["max_abs"] < abs_tol, where
        print(where)


@pytest.mark.parametrize("world", sorted(CASES))
def test_a_video_with_fewer_latent_rows_than_ranks_is_refused(launches, world):
    for results in launches[world]:
        message = results["too_short"]
        assert f"{world - 1} latent rows" in message and f"{world} ranks of the encode group" in message


@pytest.mark.parametrize("world", sorted(CASES))
def test_peak_memory_per_rank_shrinks(launches, world):
    """Each rank holds ~1/world of the rows (+ halos); the gathered latents are small."""
    single = launches[world][0]["peak_single"]
    peaks = [r["peak_parallel"] for r in launches[world]]
    print(f"world {world}: single-process peak {single / 2**20:.2f} MiB, per rank "
          f"{[round(p / 2**20, 2) for p in peaks]} MiB")
    bound = single * (12 / world + 2) / 12  # 12 latent rows: own rows plus up to 2 halo rows per conv
    for rank, peak in enumerate(peaks):
        assert peak < bound, (rank, peak, bound)


def test_single_process_walk_equals_reference():
    """group=None runs the same slab walk on one rank: it must equal the reference encode bitwise."""
    vae = _vae("attn")
    video = _video(1, 5, 3, 2)
    with torch.no_grad():
        ref = vae.encode(video)
    assert torch.equal(parallel_vae_encode(vae, video, None), ref)


def test_bad_videos_are_refused_by_name():
    vae = _vae("tiny")
    with pytest.raises(ValueError, match="frame count F must be 4n\\+1"):
        parallel_vae_encode(vae, torch.zeros(1, 3, 4, 16, 16), None)
    with pytest.raises(ValueError, match="H must be a positive multiple of 8"):
        parallel_vae_encode(vae, torch.zeros(1, 3, 5, 12, 16), None)
