"""The static chunk VAE equals the reference; tiled decode is close to untiled and bounded in memory.

Static chunks run the reference modules on preallocated slots, so fp32 equality is expected to be
exact (the same convolutions on the same frames); 1e-6 relative L2 is the issue's bound. Tiling is
lossy where a tile's border convolutions see zeros instead of their neighbours; the bound is 40 dB
PSNR on decoded uint8 frames. Memory is counted exactly (`bench.live_memory.LiveBytes`): one tile's
working memory scales with its pixel count, the trunk features and the output video stay whole.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from wan_engine.assembly import load_vae
from wan_engine.assembly.pipeline import embedded_weights
from wan_engine.bench.live_memory import LiveBytes
from wan_engine.configs import TINY_VAE22, VAEConfig, get_preset
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.vae import WanVAE
from wan_engine.shapes.world import random_clips
from wan_engine.vae.static import decoder_chunks, encoder_chunks, static_decode, static_encode
from wan_engine.vae.tiling import TilePlan, tiled_decode


def _random_vae(wan22: bool = False, **config) -> WanVAE:
    """A seeded VAE of `config`; `wan22`: Wan2.2's architecture (TINY_VAE22's) with those changes."""
    vae = WanVAE(dataclasses.replace(TINY_VAE22, **config) if wan22 else VAEConfig(**config)).eval()
    vae.load_state_dict(random_state_dict(vae, seed=1))
    return vae


@pytest.fixture(scope="module")
def shapes_vae() -> WanVAE:
    return load_vae(embedded_weights("shapes"), config=get_preset("shapes").vae).eval()


def _rel_l2(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    qa, qb = ((a.clamp(-1, 1) + 1) * 127.5).round(), ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = float(((qa - qb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()


@pytest.mark.parametrize("chunks", [1, 2, 5])
@pytest.mark.parametrize("config", [dict(base_dim=8), dict(base_dim=8, num_res_blocks=1, attn_scales=(1.0,))],
                         ids=["official-layout", "attention-in-stages"])
def test_static_chunks_equal_the_reference(chunks, config):
    vae = _random_vae(**config)
    gen = torch.Generator().manual_seed(chunks)
    latents = torch.randn(1, 16, chunks, 4, 6, generator=gen)
    video = torch.rand(1, 3, 4 * (chunks - 1) + 1, 32, 48, generator=gen) * 2 - 1
    with torch.no_grad():
        decoded, expected = static_decode(vae, latents), vae.decode(latents)
        encoded, expected_latents = static_encode(vae, video), vae.encode(video)
    assert _rel_l2(decoded, expected) <= 1e-6 and _rel_l2(encoded, expected_latents) <= 1e-6
    assert torch.equal(decoded, expected) and torch.equal(encoded, expected_latents)  # in fact bit for bit


def test_slots_are_fixed_shapes_allocated_before_the_first_chunk():
    vae = _random_vae(base_dim=8)
    dec, enc = decoder_chunks(vae), encoder_chunks(vae)
    slots = dec.slots(2, 4, 6, torch.float32, "cpu")
    assert slots and all(s.abs().sum() == 0 for s in slots)  # zeros: the causal zero padding
    x = torch.randn(2, 16, 1, 4, 6)
    _, after_first = dec.first(x, slots)
    _, after_steady = dec.steady(x, after_first)
    assert [s.shape for s in after_first] == [s.shape for s in after_steady] == [s.shape for s in slots]
    assert len(enc.slots(1, 32, 48, torch.float32, "cpu")) == len(enc.specs)
    with pytest.raises(ValueError, match="does not divide"):
        enc.slots(1, 30, 48, torch.float32, "cpu")


@pytest.mark.parametrize("latents_from", ["shapes-clips", "random"])
def test_tiled_decode_is_within_40_db_of_the_untiled_decode(shapes_vae, latents_from):
    if latents_from == "shapes-clips":
        clips, _ = random_clips(2, (192, 192), 9, seed=5)
        with torch.no_grad():
            latents = shapes_vae.encode(clips)
    else:
        latents = torch.randn(1, 16, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    plan = TilePlan((12, 12), overlap=4)
    with torch.no_grad():
        tiled, full = tiled_decode(shapes_vae, latents, plan), static_decode(shapes_vae, latents)
    psnr = _psnr(tiled, full)
    print(f"{latents_from}: {plan.tiles(24, 24)} tiles of 12x12 latents, overlap 4: PSNR {psnr:.1f} dB vs untiled")
    assert psnr >= 40.0


def test_one_tile_is_the_untiled_decode_and_the_blend_is_exact_on_consistent_tiles(shapes_vae):
    latents = torch.randn(1, 16, 2, 10, 14, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(tiled_decode(shapes_vae, latents, TilePlan()), static_decode(shapes_vae, latents))
    plan = TilePlan((6, 8), overlap=3)
    assert plan.spans(10, 0) == [(0, 6), (3, 9), (4, 10)] and plan.spans(14, 1) == [(0, 8), (5, 13), (6, 14)]


@pytest.mark.parametrize("wan22", [False, True], ids=["wan2.1", "wan2.2"])
def test_tiled_peak_memory_drops_by_the_predicted_factor(wan22):
    """The memory model (bench.vae_memory: the video, blend weights and trunk features stay whole;
    each tile adds its cache slots, exact from the architecture, and one chunk's transients, probed
    once per latent pixel on a 6x6 tile) predicts the measured peak of the untiled and the tiled
    decodes at another size, and so the factor tiling saves; for the Wan2.2 VAE too."""
    from wan_engine.bench.vae_memory import DecodeMemoryModel

    vae = _random_vae(base_dim=16, wan22=wan22)
    model = DecodeMemoryModel.probe(vae)
    latents = torch.randn(1, vae.config.z_dim, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    b, _, f, h, w = latents.shape
    with torch.no_grad(), LiveBytes() as untiled:
        static_decode(vae, latents)
    assert abs(untiled.peak - model.peak_bytes(b, f, h, w)) <= 0.10 * untiled.peak
    for tile in ((12, 12), (6, 6)):
        plan = TilePlan(tile, overlap=2)
        with torch.no_grad(), LiveBytes() as tiled:
            tiled_decode(vae, latents, plan)
        predicted = model.peak_bytes(b, f, h, w, plan)
        print(f"tile {tile}: peak {tiled.peak / 2**20:.1f} MiB, predicted {predicted / 2**20:.1f} MiB (untiled "
              f"{untiled.peak / 2**20:.1f} MiB): {untiled.peak / tiled.peak:.2f}x less, predicted "
              f"{model.peak_bytes(b, f, h, w) / predicted:.2f}x")
        assert abs(tiled.peak - predicted) <= 0.10 * predicted


@pytest.mark.parametrize("text, expected", [("off", TilePlan()), ("auto", "auto"),
                                            ("256x128", TilePlan((32, 16), overlap=4))])
def test_tiling_option_parses(text, expected):
    assert TilePlan.parse(text) == expected


@pytest.mark.parametrize("text, message", [("250x128", "multiples of 8"), ("big", "off, auto or HxW"),
                                           ("0x64", "positive multiples")])
def test_bad_tiling_options_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        TilePlan.parse(text)


def test_bf16_decode_quality_against_fp32_on_shapes_clips(shapes_vae):
    """Reported: PSNR of the bf16 decode against the fp32 decode of the same latents, and whether the
    adherence scorer reads the same colour, background and motion off both. Bound: the GPU check's
    bf16 VAE floor (bench.bounds.vae_frames_bound), from bf16's 8-bit mantissa."""
    from wan_engine.bench.adherence import read_clip
    from wan_engine.bench.bounds import vae_frames_bound
    from wan_engine.pipelines.t2v import frames_to_uint8
    from wan_engine.vae.decode import VAEDecodeOptions, VAEDecoder

    clips, combos = random_clips(4, (96, 96), 17, seed=8)
    with torch.no_grad():
        latents = shapes_vae.encode(clips)
    fp32, bf16 = VAEDecoder(shapes_vae)(latents), VAEDecoder(shapes_vae, VAEDecodeOptions(dtype="bf16"))(latents)
    psnr = _psnr(bf16, fp32)
    def answers(video):
        reading = read_clip(frames_to_uint8(video))
        return reading.color, reading.background, reading.direction

    same = [answers(a) == answers(b) for a, b in zip(fp32, bf16)]
    print(f"bf16 decode vs fp32: PSNR {psnr:.1f} dB; scorer reads the same on {sum(same)}/{len(same)} clips")
    assert psnr >= vae_frames_bound("bf16").limit
    assert all(same)
    assert next(shapes_vae.parameters()).dtype == torch.float32  # the bf16 copy leaves the model alone


def test_the_pipeline_decodes_through_the_static_chunks_and_can_tile():
    import wan_engine
    from wan_engine.vae.decode import VAEDecodeOptions

    plain = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    tiled = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu",
                                                   vae_decode=VAEDecodeOptions(tiling=TilePlan((4, 4), overlap=2)))
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(plain.decode(latents), plain.vae.decode(latents))  # the static loop, bit for bit
        video = tiled.decode(latents)
    assert tiled.vae_decoder.last_plan.tiles(8, 8) == 9 and video.shape == (1, 3, 5, 64, 64)
    with pytest.raises(ValueError, match="vae tiling must be a TilePlan or 'auto'"):
        VAEDecodeOptions(tiling="8x8")
