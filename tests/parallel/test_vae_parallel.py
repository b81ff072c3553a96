"""Row-parallel VAE decode on 2 and 4 gloo ranks against the single-process chunked `WanVAE.decode`.

Every rank decodes the same seeded latents both ways on the CPU; a wrong halo, a misplaced slab or
a lost cache frame changes the output by O(0.1).

Tolerances. Each slab's convolutions see exactly the values the whole-frame ones see, but oneDNN
(like cuDNN) picks its conv micro-kernels by tensor shape, and a slab is shorter than the frame:
for some widths (under 12 pixels, or a 3-channel output whose width is not a multiple of 4, and
some wider ones) the fp32 sums are reordered. So:
- float64 cases prove the function is the same: relative L2 < 1e-12 (reordering costs ~1e-16 per
  op; measured about 1e-16 overall);
- float32 cases, the VAE's real dtype: relative L2 < 1e-5 and max abs < 1e-4 on outputs in [-1, 1]
  (one reordered conv is off by ~1e-7 relative; measured about 3e-7 relative, 3e-6 absolute after
  ~40 convolutions). Bitwise equality is printed, not required.
Also measured: the peak activation memory of one rank versus one process (allocator events of the
torch profiler).
"""
from __future__ import annotations

import pytest
import torch

from sp_harness import run_ranks_ok
from wan_engine.configs import TINY_VAE, TINY_VAE22, VAEConfig
from wan_engine.loading.random_init import random_state_dict
from wan_engine.parallel import row_ranges
from wan_engine.parallel.vae_decode import parallel_vae_decode
from wan_engine.reference.vae import WanVAE

# Attention in an upsampling stage (scale 0.5), plus the mid-block one: both split over rows.
ATTN_VAE = VAEConfig(base_dim=4, attn_scales=(0.5,))
# wan22: the Wan2.2 VAE (2x2 pixel patch, stage shortcuts; 16 pixels per latent row).
CONFIGS = {"tiny": TINY_VAE, "attn": ATTN_VAE, "wan22": TINY_VAE22}

# name: (vae, batch, latent frames, latent h, latent w, output, dtype). Heights not divisible by
# the rank count: 5 rows over 2 ranks are 3+2, over 4 ranks 2+1+1+1; 4 rows over 4: one each.
CASES = {
    2: [
        ("tiny_h5_w6_f3", "tiny", 1, 3, 5, 6, "all", torch.float32),
        ("attn_b2_h3_w3_f2_rank0", "attn", 2, 2, 3, 3, "rank0", torch.float32),
        ("tiny_h5_w3_f2_fp64", "tiny", 1, 2, 5, 3, "all", torch.float64),
        ("wan22_h5_w3_f3", "wan22", 1, 3, 5, 3, "all", torch.float32),
    ],
    4: [
        ("tiny_h5_w4_f2", "tiny", 1, 2, 5, 4, "all", torch.float32),
        ("attn_h6_w6_f2_rank0", "attn", 1, 2, 6, 6, "rank0", torch.float32),
        ("tiny_h4_w3_f1", "tiny", 1, 1, 4, 3, "all", torch.float32),
        ("attn_h5_w2_f2_fp64", "attn", 1, 2, 5, 2, "all", torch.float64),
        ("wan22_h5_w2_f2_fp64_rank0", "wan22", 1, 2, 5, 2, "rank0", torch.float64),
    ],
}
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-12)}  # (rel L2, max abs)
MEMORY_CASE = ("tiny", 1, 2, 12, 4)  # 96x32 pixels, 5 frames: activations dominate the weights


def _vae(name: str) -> WanVAE:
    vae = WanVAE(CONFIGS[name]).eval()
    vae.load_state_dict(random_state_dict(vae, seed=3))
    return vae


def _latents(batch, frames, h, w, channels=16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 * h + 10 * w + frames + batch)
    return torch.randn(batch, channels, frames, h, w, generator=gen)


def peak_cpu_bytes(fn) -> int:
    """Peak bytes allocated on the CPU while `fn()` runs, above what was live before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    allocs = sorted(
        (n.start_time_ns, n.extra_fields.alloc_size)
        for n in walk(prof.profiler.kineto_results.experimental_event_tree())
        if type(n.extra_fields).__name__ == "_ExtraFields_Allocation" and n.extra_fields.device.type == "cpu"
    )
    live = peak = 0
    for _, size in allocs:
        live += size
        peak = max(peak, live)
    return peak


def vae_worker(rank: int, world_size: int) -> dict:
    import torch.distributed as dist

    world = dist.group.WORLD
    results = {}
    vaes = {name: _vae(name) for name in CONFIGS}
    for name, vae_name, batch, frames, h, w, output, dtype in CASES[world_size]:
        vae = vaes[vae_name].to(dtype)
        latents = _latents(batch, frames, h, w, vae.config.z_dim).to(dtype)
        with torch.no_grad():
            ref = vae.decode(latents)
        got = parallel_vae_decode(vae, latents, world, output=output)
        if got is None:
            results[name] = {"none": True}
            continue
        results[name] = {
            "none": False,
            "shape_ok": got.shape == ref.shape and got.dtype == ref.dtype,
            "equal": bool(torch.equal(got, ref)),
            "max_abs": float((got - ref).abs().max()),
            "rel_l2": float((got - ref).double().norm() / ref.double().norm()),
            "ref_spread": float(ref.std()),
        }
    try:
        parallel_vae_decode(vaes["tiny"].float(), _latents(1, 1, world_size - 1, 4), world)
        results["too_short"] = "no error"
    except ValueError as err:
        results["too_short"] = str(err)

    vae_name, batch, frames, h, w = MEMORY_CASE
    vae, latents = vaes[vae_name].float(), _latents(batch, frames, h, w)
    parallel_vae_decode(vae, latents, world, output="rank0")  # warm-up: first-call allocations
    results["peak_parallel"] = peak_cpu_bytes(
        lambda: parallel_vae_decode(vae, latents, world, output="rank0"))
    dist.barrier()
    if rank == 0:
        with torch.no_grad():
            results["peak_single"] = peak_cpu_bytes(lambda: vae.decode(latents))
        results["output_bytes"] = 3 * (1 + 4 * (frames - 1)) * 8 * h * 8 * w * 4
    return results


@pytest.fixture(scope="module")
def launches():
    return {world: run_ranks_ok(world, vae_worker) for world in CASES}


PARAMS = [(world, case[0]) for world, cases in CASES.items() for case in cases]


@pytest.mark.parametrize("world,name", PARAMS, ids=[f"{w}ranks-{n}" for w, n in PARAMS])
def test_parallel_decode_equals_single_process(launches, world, name):
    output, dtype = next(c[-2:] for c in CASES[world] if c[0] == name)
    rel_tol, abs_tol = TOLERANCES[dtype]
    for rank, results in enumerate(launches[world]):
        got = results[name]
        if output == "rank0" and rank > 0:
            assert got["none"], (rank, got)
            continue
        assert not got["none"] and got["shape_ok"], (rank, got)
        assert got["ref_spread"] > 0.05, got  # a non-trivial video
        where = (f"{name} rank {rank}: rel L2 {got['rel_l2']:.2e}, max abs {got['max_abs']:.2e}, "
                 f"bitwise equal {got['equal']}")
        assert got["rel_l2"] < rel_tol and got["max_abs"] < abs_tol, where
        print(where)


@pytest.mark.parametrize("world", sorted(CASES))
def test_height_smaller_than_the_group_is_refused(launches, world):
    for results in launches[world]:
        assert f"h={world - 1}" in results["too_short"] and f"{world} ranks" in results["too_short"]


@pytest.mark.parametrize("world", sorted(CASES))
def test_peak_memory_per_rank_shrinks(launches, world):
    """Each rank holds ~1/world of the rows (+ halos), plus rank 0 the gathered output video."""
    single = launches[world][0]["peak_single"]
    output = launches[world][0]["output_bytes"]
    peaks = [r["peak_parallel"] for r in launches[world]]
    print(f"world {world}: single-process peak {single / 2**20:.2f} MiB, per rank "
          f"{[round(p / 2**20, 2) for p in peaks]} MiB, output video {output / 2**20:.2f} MiB")
    # 12 latent rows: a rank holds 12/world rows plus up to 2 halo rows per conv at each scale.
    bound = single * (12 / world + 2) / 12
    for rank, peak in enumerate(peaks):
        extra = 2 * output if rank == 0 else 0  # the gather buffers and the concatenated video
        assert peak < bound + extra, (rank, peak, bound, extra)


def test_row_ranges_are_balanced_and_cover_every_row():
    assert row_ranges(5, 4) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert row_ranges(6, 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert row_ranges(7, 1) == [(0, 7)]
    with pytest.raises(ValueError, match="height 3 cannot be split into 4"):
        row_ranges(3, 4)
    with pytest.raises(ValueError, match="parts must be >= 1"):
        row_ranges(3, 0)


def test_single_process_walk_equals_reference():
    """group=None runs the same slab walk on one rank: must equal the reference decode."""
    vae = _vae("attn")
    latents = _latents(1, 2, 2, 2)
    with torch.no_grad():
        ref = vae.decode(latents)
    assert torch.equal(parallel_vae_decode(vae, latents, None), ref)


def test_bad_arguments_are_refused():
    vae = _vae("tiny")
    with pytest.raises(ValueError, match="output must be one of"):
        parallel_vae_decode(vae, _latents(1, 1, 2, 2), None, output="rank1")
    with pytest.raises(ValueError, match=r"latents must have shape \[B, 16, f, h, w\]"):
        parallel_vae_decode(vae, torch.zeros(1, 4, 1, 2, 2), None)
