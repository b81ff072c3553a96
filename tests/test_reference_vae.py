"""The reference Wan2.1 VAE against diffusers' AutoencoderKLWan, its chunked vs whole-clip passes,
and the official <-> diffusers key map.

Everything runs in fp32 on the CPU with base_dim 8 (or smaller). Tolerances:
- diffusers parity 1e-4 relative L2: the same math in a different op order (fp32 eps 1.2e-7,
  about 40 layers of convolutions); measured about 1e-6.
- chunked == whole clip 2e-5: the same function, with convolutions run over chunks of different
  lengths (so different kernel blockings); measured 0 (encode) to 1e-6 (decode).
"""
from __future__ import annotations

import importlib

import pytest
import torch

from wan_engine.configs import TINY_VAE, VAEConfig
from wan_engine.loading.random_init import random_state_dict
from wan_engine.loading.vae_format import (
    diffusers_to_official_vae,
    infer_vae_config,
    official_to_diffusers_vae,
)
from wan_engine.reference.vae import WanVAE
from wan_engine.reference.vae_blocks import FeatureCache

PARITY_RTOL = 1e-4
CHUNK_RTOL = 2e-5

# Deliberately unlike the release: 3 stages, 1 residual block, temporal stride 2 in stage 0,
# z_dim 4, widths that are not powers of two.
ODD_VAE = VAEConfig(
    base_dim=4, z_dim=4, dim_mult=(1, 2, 3), num_res_blocks=1, temporal_downsample=(True, False),
    latent_mean=(0.1, -0.2, 0.3, 0.0), latent_std=(1.5, 0.5, 2.0, 1.0),
)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def diffusers_kwargs(cfg: VAEConfig) -> dict:
    return dict(base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                num_res_blocks=cfg.num_res_blocks, attn_scales=list(cfg.attn_scales),
                temperal_downsample=list(cfg.temporal_downsample),
                latents_mean=list(cfg.latent_mean), latents_std=list(cfg.latent_std))


def diffusers_module(name: str):
    """A diffusers module, for the comparisons with diffusers only: the chunking, causality,
    key-map and validation tests here run where diffusers is absent (the GPU image)."""
    pytest.importorskip("diffusers", reason="diffusers is the independent oracle for this comparison")
    return importlib.import_module(name)


def autoencoder_kl_wan(**kwargs):
    return diffusers_module("diffusers").AutoencoderKLWan(**kwargs)


def build_ours(cfg: VAEConfig, seed: int) -> WanVAE:
    ours = WanVAE(cfg).eval()
    ours.load_state_dict(random_state_dict(ours, seed), strict=True)
    return ours


def build_pair(ours: WanVAE):
    theirs = autoencoder_kl_wan(**diffusers_kwargs(ours.config)).eval()
    theirs.load_state_dict(official_to_diffusers_vae(ours.state_dict()), strict=True)
    return ours, theirs


@pytest.fixture(scope="module")
def tiny_vae():
    return build_ours(TINY_VAE, seed=3)


@pytest.fixture(scope="module")
def odd_vae():
    return build_ours(ODD_VAE, seed=11)


@pytest.fixture(scope="module")
def tiny_pair(tiny_vae):
    return build_pair(tiny_vae)


@pytest.fixture(scope="module")
def odd_pair(odd_vae):
    return build_pair(odd_vae)


def random_video(b: int, f: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=gen) * 2 - 1


def stats(cfg: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, cfg.z_dim, 1, 1, 1)
    return torch.tensor(cfg.latent_mean).view(shape), torch.tensor(cfg.latent_std).view(shape)


# -- parity with diffusers -------------------------------------------------------------------------

@pytest.mark.parametrize("pair_name", ["tiny_pair", "odd_pair"])
@pytest.mark.parametrize("b,f,h,w", [(1, 5, 16, 16), (2, 9, 24, 40)])
@torch.no_grad()
def test_encode_matches_diffusers(request, pair_name, b, f, h, w):
    ours, theirs = request.getfixturevalue(pair_name)
    cfg = ours.config
    video = random_video(b, f, h, w, seed=f + h)
    latents = ours.encode(video)
    mean, std = stats(cfg)
    expected = (theirs.encode(video).latent_dist.mean - mean) / std
    frames = 1 + (f - 1) // cfg.temporal_stride
    assert latents.shape == (b, cfg.z_dim, frames, h // cfg.spatial_stride, w // cfg.spatial_stride)
    err = rel_l2(latents, expected)
    assert err < PARITY_RTOL, f"encode rel L2 {err:.2e}"


@pytest.mark.parametrize("pair_name", ["tiny_pair", "odd_pair"])
@pytest.mark.parametrize("b,f,h,w", [(1, 2, 2, 2), (2, 3, 3, 5)])
@torch.no_grad()
def test_decode_matches_diffusers(request, pair_name, b, f, h, w):
    ours, theirs = request.getfixturevalue(pair_name)
    cfg = ours.config
    latents = torch.randn(b, cfg.z_dim, f, h, w, generator=torch.Generator().manual_seed(f * h))
    video = ours.decode(latents)
    mean, std = stats(cfg)
    expected = theirs.decode(latents * std + mean).sample
    s = cfg.spatial_stride
    assert video.shape == (b, 3, 1 + (f - 1) * cfg.temporal_stride, h * s, w * s)
    # The comparison must not be decided by the clamp: most values lie strictly inside (-1, 1).
    assert (video.abs() < 1).float().mean() > 0.5
    assert video.abs().max() <= 1.0
    err = rel_l2(video, expected)
    assert err < PARITY_RTOL, f"decode rel L2 {err:.2e}"


# -- chunked (feature cache) vs whole clip -----------------------------------------------------------

@pytest.mark.parametrize("vae_name", ["tiny_vae", "odd_vae"])
@pytest.mark.parametrize("f,h,w", [(1, 16, 24), (9, 24, 16), (13, 8, 8)])
@torch.no_grad()
def test_chunked_encode_equals_whole_clip(request, vae_name, f, h, w):
    ours = request.getfixturevalue(vae_name)
    video = random_video(1, f, h, w, seed=7 * f)
    chunked = ours.encode_mean(video, chunked=True)
    whole = ours.encode_mean(video, chunked=False)
    assert chunked.shape == whole.shape
    err = rel_l2(chunked, whole)
    assert err < CHUNK_RTOL, f"chunked vs whole encode rel L2 {err:.2e}"


@pytest.mark.parametrize("vae_name", ["tiny_vae", "odd_vae"])
@pytest.mark.parametrize("f,h,w", [(1, 3, 2), (4, 2, 3)])
@torch.no_grad()
def test_chunked_decode_equals_whole_clip(request, vae_name, f, h, w):
    ours = request.getfixturevalue(vae_name)
    mu = 2 * torch.randn(1, ours.config.z_dim, f, h, w, generator=torch.Generator().manual_seed(f))
    chunked = ours.decode_raw(mu, chunked=True)
    whole = ours.decode_raw(mu, chunked=False)
    assert chunked.shape == whole.shape
    err = rel_l2(chunked, whole)
    assert err < CHUNK_RTOL, f"chunked vs whole decode rel L2 {err:.2e}"


@torch.no_grad()
def test_whole_clip_is_not_one_cached_chunk(tiny_vae):
    """Running the cached path on one chunk holding every frame skips temporal resampling (the
    official first-chunk rule), which is why whole-clip has its own definition."""
    ours = tiny_vae
    video = random_video(1, 9, 16, 16, seed=0)
    one_chunk = ours.encoder(video, FeatureCache())
    assert one_chunk.shape[2] == 9 and ours.encoder(video).shape[2] == 3


@torch.no_grad()
def test_whole_clip_is_causal(tiny_vae):
    """Latent frame k sees video frames <= 4k; decoded frames of a latent prefix do not change
    when later latents are appended."""
    ours = tiny_vae
    video = random_video(1, 9, 16, 16, seed=1)
    changed = video.clone()
    changed[:, :, 6:] = random_video(1, 3, 16, 16, seed=2)
    a, b = ours.encode(video, chunked=False), ours.encode(changed, chunked=False)
    assert torch.equal(a[:, :, :2], b[:, :, :2])
    assert rel_l2(a[:, :, 2], b[:, :, 2]) > 1e-2

    latents = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    prefix = ours.decode(latents[:, :, :2], chunked=False)
    full = ours.decode(latents, chunked=False)
    assert rel_l2(full[:, :, :5], prefix) < CHUNK_RTOL


# -- key map and config inference ---------------------------------------------------------------------

def meta_state_dict(cfg: VAEConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return WanVAE(cfg).state_dict()


def meta_diffusers_state_dict(cfg: VAEConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return autoencoder_kl_wan(**diffusers_kwargs(cfg)).state_dict()


def shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_official_layout_matches_diffusers_converter():
    """diffusers' own converter for Wan2.1_VAE.pth (an independent statement of the official names)
    maps our state dict onto AutoencoderKLWan exactly, and agrees with our mapping."""
    ours = meta_state_dict(VAEConfig())
    assert len(ours) == 194
    assert tuple(ours["decoder.upsamples.3.time_conv.weight"].shape) == (768, 384, 3, 1, 1)
    assert tuple(ours["encoder.downsamples.8.time_conv.weight"].shape) == (384, 384, 3, 1, 1)
    convert = diffusers_module("diffusers.loaders.single_file_utils").convert_wan_vae_to_diffusers
    converted = convert(dict(ours))
    assert shapes(converted) == shapes(meta_diffusers_state_dict(VAEConfig()))
    assert shapes(official_to_diffusers_vae(ours)) == shapes(converted)


@pytest.mark.parametrize("cfg", [VAEConfig(), TINY_VAE, ODD_VAE], ids=["default", "tiny", "odd"])
def test_key_map_round_trip(cfg):
    official = meta_state_dict(cfg)
    back = diffusers_to_official_vae(official_to_diffusers_vae(official))
    assert back.keys() == official.keys()
    assert all(back[k] is official[k] for k in official)


@pytest.mark.parametrize("cfg", [VAEConfig(), TINY_VAE, ODD_VAE], ids=["default", "tiny", "odd"])
def test_key_map_matches_diffusers_module(cfg):
    official = meta_state_dict(cfg)
    diffusers_sd = meta_diffusers_state_dict(cfg)
    assert shapes(official_to_diffusers_vae(official)) == shapes(diffusers_sd)
    assert shapes(diffusers_to_official_vae(diffusers_sd)) == shapes(official)


@pytest.mark.parametrize("key", ["encoder.downsamples.0.residual.9.weight", "encoder.conv9.weight",
                                 "decoder.upsamples.3.residual.0.gamma", "model.conv1.weight"])
def test_unknown_official_key_raises(key):
    sd = dict(meta_state_dict(TINY_VAE))
    sd[key] = torch.empty(1)
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        official_to_diffusers_vae(sd)


@pytest.mark.parametrize("key", ["decoder.up_blocks.0.resnets.0.avg_shortcut.weight",
                                 "decoder.up_blocks.0.upsamplers.0.norm1.gamma",
                                 "encoder.mid_block.attentions.1.proj.weight", "vae.quant_conv.weight"])
def test_unknown_diffusers_key_raises(key):
    sd = dict(official_to_diffusers_vae(meta_state_dict(TINY_VAE)))
    sd[key] = torch.empty(1)
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        diffusers_to_official_vae(sd)


def test_decoder_attention_has_no_diffusers_name():
    cfg = VAEConfig(base_dim=4, attn_scales=(0.5,))
    with pytest.raises(KeyError, match="no attention"):
        official_to_diffusers_vae(meta_state_dict(cfg))


@pytest.mark.parametrize(
    "cfg",
    [VAEConfig(), TINY_VAE, ODD_VAE,
     VAEConfig(base_dim=4, dim_mult=(1, 2, 2, 3), num_res_blocks=3, attn_scales=(1.0, 0.25),
               temporal_downsample=(True, False, True))],
    ids=["default", "tiny", "odd", "attention"],
)
def test_infer_vae_config(cfg):
    stats_kw = {} if cfg.z_dim == 16 else dict(latent_mean=cfg.latent_mean, latent_std=cfg.latent_std)
    assert infer_vae_config(meta_state_dict(cfg), **stats_kw) == cfg
    if not cfg.attn_scales:  # our diffusers names (diffusers' Wan2.1 decoder has no stage attention)
        assert infer_vae_config(official_to_diffusers_vae(meta_state_dict(cfg)), **stats_kw) == cfg


def test_infer_vae_config_needs_stats_for_other_z_dim():
    with pytest.raises(ValueError, match="latent_mean"):
        infer_vae_config(meta_state_dict(ODD_VAE))


# -- input validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,match", [
    ((1, 3, 6, 16, 16), "frame count F must be 4n\\+1"),
    ((1, 3, 4, 16, 16), "frame count F must be 4n\\+1"),
    ((1, 3, 5, 20, 16), "H must be a positive multiple of 8"),
    ((1, 3, 5, 16, 12), "W must be a positive multiple of 8"),
    ((1, 4, 5, 16, 16), "video must have shape"),
    ((3, 5, 16, 16), "video must have shape"),
])
def test_encode_rejects_bad_video(tiny_vae, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.encode(torch.zeros(shape))


@pytest.mark.parametrize("shape,match", [
    ((1, 8, 2, 2, 2), "latents must have shape"),
    ((1, 16, 0, 2, 2), "at least one latent frame"),
])
def test_decode_rejects_bad_latents(tiny_vae, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.decode(torch.zeros(shape))
