"""The Wan2.2 VAE (TI2V-5B's `Wan2.2_VAE.pth`): the reference against diffusers'
`AutoencoderKLWan(is_residual=True)`, its chunked, static, tiled and bf16 paths, and its key maps.

fp32 on the CPU at toy width (`TINY_VAE22`: the release's structure, 48 latent channels, the 2x2
patch, the stage shortcuts). Tolerances as in test_reference_vae.py: diffusers parity 1e-4
relative L2 (the same math in another op order; measured ~1e-7), chunked vs whole clip 2e-5 (the
same function over chunks of other lengths); the static chunk loop runs the reference modules on
preallocated caches, the same ops in the same order: bit for bit.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch

from wan_engine.configs import TINY_VAE, TINY_VAE22, WAN22_VAE
from wan_engine.loading.random_init import random_state_dict
from wan_engine.loading.vae_format import diffusers_to_official_vae, infer_vae_config, official_to_diffusers_vae
from wan_engine.reference.vae import WanVAE
from wan_engine.reference.vae_stages import patchify, unpatchify
from wan_engine.vae.decode import VAEDecodeOptions, VAEDecoder
from wan_engine.vae.static import static_decode, static_encode
from wan_engine.vae.tiling import TilePlan, tiled_decode

PARITY_RTOL = 1e-4
CHUNK_RTOL = 2e-5


def rel_l2(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def psnr(a, b) -> float:
    return 10 * np.log10(4.0 / ((a.double() - b.double()) ** 2).mean().item())


def build(cfg=TINY_VAE22, seed=5) -> WanVAE:
    vae = WanVAE(cfg).eval()
    vae.load_state_dict(random_state_dict(vae, seed), strict=True)
    return vae


@pytest.fixture(scope="module")
def vae():
    return build()


def diffusers_twin(ours: WanVAE):
    pytest.importorskip("diffusers", reason="diffusers is the independent oracle for this comparison")
    cfg = ours.config
    theirs = importlib.import_module("diffusers").AutoencoderKLWan(
        base_dim=cfg.base_dim, decoder_base_dim=cfg.decoder_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks, temperal_downsample=list(cfg.temporal_downsample),
        latents_mean=list(cfg.latent_mean), latents_std=list(cfg.latent_std), is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16).eval()
    theirs.load_state_dict(official_to_diffusers_vae(ours.state_dict()), strict=True)
    return theirs


@pytest.mark.parametrize("frames", [1, 5, 17])  # 1, 2 and 5 latent frames
def test_encode_and_decode_match_diffusers(vae, frames):
    theirs = diffusers_twin(vae)
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        mu = vae.encode_mean(video)
        expected_mu = theirs.encode(video).latent_dist.mean
        assert mu.shape == (1, 48, (frames - 1) // 4 + 1, 2, 3)
        assert rel_l2(mu, expected_mu) < PARITY_RTOL
        z = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
        out = vae.decode_raw(z).clamp(-1, 1)
        expected = theirs.decode(z).sample
    assert out.shape == (1, 3, frames, 32, 48)
    assert rel_l2(out, expected) < PARITY_RTOL


@pytest.mark.parametrize("latent_frames", [1, 2, 5])
def test_chunked_equals_whole_clip(vae, latent_frames):
    frames = 4 * (latent_frames - 1) + 1
    video = torch.rand(1, 3, frames, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = torch.randn(1, 48, latent_frames, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_l2(vae.encode_mean(video), vae.encode_mean(video, chunked=False)) < CHUNK_RTOL
        assert rel_l2(vae.decode_raw(z), vae.decode_raw(z, chunked=False)) < CHUNK_RTOL


@pytest.mark.parametrize("latent_frames", [1, 2, 5])
def test_static_chunks_equal_the_reference(vae, latent_frames):
    """The static chunk loops (the CUDA-graph and ONNX path) on the Wan2.2 VAE: the shortcuts'
    first-chunk rule rides on the chunk kind, as the temporal upsample's does."""
    z = torch.randn(1, 48, latent_frames, 3, 2, generator=torch.Generator().manual_seed(4))
    video = torch.rand(1, 3, 4 * (latent_frames - 1) + 1, 48, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(static_decode(vae, z), vae.decode(z))
        assert torch.equal(static_encode(vae, video), vae.encode(video))


def test_tiled_decode(vae):
    """Tiles of the latent plane, decoded alone and blended: one tile is the untiled decode; the
    seam error falls as the overlap grows, and is as small as the Wan2.1 VAE's of the same width
    under the same plan (random weights blend worse than trained ones; test_vae_static.py holds
    the >= 40 dB bound on the trained `shapes` VAE)."""
    z = torch.randn(1, 48, 2, 20, 20, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = vae.decode(z)
        assert torch.equal(tiled_decode(vae, z, TilePlan((20, 20), overlap=4)), static_decode(vae, z))
        scores = [psnr(tiled_decode(vae, z, TilePlan((10, 10), overlap=o)), full) for o in (2, 4, 6)]
        wan21 = build(TINY_VAE)
        z21 = torch.randn(1, 16, 2, 20, 20, generator=torch.Generator().manual_seed(6))
        wan21_score = psnr(tiled_decode(wan21, z21, TilePlan((10, 10), overlap=6)), wan21.decode(z21))
    print(f"Wan2.2 VAE tiled 10x10, overlap 2/4/6: {scores[0]:.1f}/{scores[1]:.1f}/{scores[2]:.1f} dB "
          f"(Wan2.1 VAE, overlap 6: {wan21_score:.1f} dB)")
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] > wan21_score - 3.0


def test_tile_given_in_pixels_follows_the_vae_stride(vae):
    """`--vae-tiling 192x192` is 24 latent cells of a Wan2.1 VAE but 12 of Wan2.2's (16 pixels each)."""
    plan = TilePlan.parse("192x192")
    assert plan.tile == (24, 24)
    assert VAEDecoder(vae, VAEDecodeOptions(tiling=plan)).options.tiling.tile == (12, 12)
    with pytest.raises(ValueError, match="multiples of 16 pixels"):
        VAEDecoder(vae, VAEDecodeOptions(tiling=TilePlan.parse("200x192")))


def test_bf16_and_fast_decodes(vae):
    z = torch.randn(1, 48, 2, 4, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = vae.decode(z)
        bf16 = VAEDecoder(vae, VAEDecodeOptions(dtype="bf16"))(z)
        fast = VAEDecoder(vae, VAEDecodeOptions(fused_norm_silu=True, channels_last=True))(z)
    print(f"Wan2.2 VAE bf16 decode vs fp32: PSNR {psnr(bf16, full):.1f} dB")
    assert psnr(bf16, full) > 35.0  # bf16 keeps 8 mantissa bits: ~2e-3 relative per op
    assert rel_l2(fast, full) < CHUNK_RTOL  # the CPU levers change only memory layouts


def test_patchify_layout():
    """The official "b c f (h q) (w r) -> b (c r q) f h w": channel c*4 + 2*dw + dh."""
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(1, 2, 1, 4, 4)
    p = patchify(x, 2)
    for c in range(2):
        for dh in range(2):
            for dw in range(2):
                assert torch.equal(p[0, c * 4 + 2 * dw + dh, 0], x[0, c, 0, dh::2, dw::2])
    assert torch.equal(unpatchify(p, 2), x)


def test_release_layout_and_key_maps():
    """`WAN22_VAE` has the release's tensor names and shapes (vae2_2.py: encoder dim 160, decoder
    256, z 48); the key maps round-trip and config inference reads it back from either layout."""
    with torch.device("meta"):
        official = WanVAE(WAN22_VAE).state_dict()
    assert official["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)
    assert official["decoder.conv1.weight"].shape == (1024, 48, 3, 3, 3)
    assert official["decoder.head.2.weight"].shape == (12, 256, 3, 3, 3)
    assert official["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (2048, 1024, 3, 1, 1)
    assert official["encoder.downsamples.1.downsamples.2.time_conv.weight"].shape == (320, 320, 3, 1, 1)
    diffusers = official_to_diffusers_vae(official)
    assert "decoder.up_blocks.0.upsampler.time_conv.weight" in diffusers
    assert "encoder.down_blocks.2.downsampler.resample.1.weight" in diffusers
    back = diffusers_to_official_vae(diffusers)
    assert back.keys() == official.keys() and all(back[k] is official[k] for k in official)
    assert infer_vae_config(official) == WAN22_VAE
    assert infer_vae_config(diffusers) == WAN22_VAE
    other = dataclasses.replace(TINY_VAE22, dim_mult=(1, 2, 2), temporal_downsample=(True, False), num_res_blocks=1)
    with torch.device("meta"):
        assert infer_vae_config(WanVAE(other).state_dict()) == other


@pytest.mark.parametrize("key", ["encoder.downsamples.0.downsamples.0.residual.9.weight",
                                 "decoder.upsamples.0.upsamples.1.time_conv.weight"])
def test_stray_official_key_is_named(key):
    with torch.device("meta"):
        sd = WanVAE(TINY_VAE22).state_dict()
    sd[key] = torch.zeros(1)
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        official_to_diffusers_vae(sd)
