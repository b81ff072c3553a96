"""The Wan2.2 VAE's checkpoint formats (`Wan2.2_VAE.pth`, official `wan/modules/vae2_2.py`) <->
diffusers `AutoencoderKLWan(is_residual=True)`.

Each stage is one module, in both layouts (names outside the stages: `vae_names`):

official                                      diffusers
encoder.downsamples.S.downsamples.J (J < n)   encoder.down_blocks.S.resnets.J
encoder.downsamples.S.downsamples.n           encoder.down_blocks.S.downsampler
decoder.upsamples.S.upsamples.J (J < n+1)     decoder.up_blocks.S.resnets.J
decoder.upsamples.S.upsamples.n+1             decoder.up_blocks.S.upsampler

(n: residual blocks per encoder stage; the stage shortcuts have no parameters.)
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from wan_engine.configs import WAN22_LATENT_MEAN, WAN22_LATENT_STD, VAEConfig

from .vae_names import (
    RESAMPLE_LEAVES,
    RESNET_LEAVES,
    RESNET_LEAVES_INV,
    latent_stats,
    shared_to_diffusers,
    shared_to_official,
    unknown,
)

_OFFICIAL_STAGE = re.compile(r"(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.+)")
_DIFFUSERS_STAGE = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(resnets\.(\d+)|downsampler|upsampler)\.(.+)")
_OFFICIAL_PARTS = {"encoder.downsamples": ("encoder.down_blocks", "downsampler", "downsamples"),
                   "decoder.upsamples": ("decoder.up_blocks", "upsampler", "upsamples")}
_DIFFUSERS_PARTS = {v[0]: (k, v[2]) for k, v in _OFFICIAL_PARTS.items()}


def is_residual_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether `sd` (official or diffusers names) is a Wan2.2 VAE's: stages as modules."""
    return any(_OFFICIAL_STAGE.fullmatch(k) or
               (_DIFFUSERS_STAGE.fullmatch(k) and k.startswith("encoder.down_blocks")) for k in sd)


def _resnet_counts(sd, pattern, stage_group: int, index_group: int, part_group: int) -> dict[tuple[str, int], int]:
    """Residual blocks per (part, stage), read off the key set."""
    counts: dict[tuple[str, int], int] = {}
    for key in sd:
        if (m := pattern.fullmatch(key)) and m.group(index_group) is not None:
            if pattern is _OFFICIAL_STAGE and m.group(4) not in RESNET_LEAVES:
                continue
            stage = (m.group(part_group), int(m.group(stage_group)))
            counts[stage] = max(counts.get(stage, 0), int(m.group(index_group)) + 1)
    return counts


def official_to_diffusers_residual(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official Wan2.2 VAE state dict to diffusers names; KeyError names a stray key."""
    resnets = _resnet_counts(sd, _OFFICIAL_STAGE, 2, 3, 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if (new := shared_to_diffusers(key)) is None:
            m = _OFFICIAL_STAGE.fullmatch(key)
            if m is None:
                raise unknown(key, "official")
            part, stage, j, leaf = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
            blocks, resampler, _ = _OFFICIAL_PARTS[part]
            if leaf in RESNET_LEAVES:
                new = f"{blocks}.{stage}.resnets.{j}.{RESNET_LEAVES[leaf]}"
            elif leaf in RESAMPLE_LEAVES and j == resnets.get((part, stage), 0):
                new = f"{blocks}.{stage}.{resampler}.{leaf}"
            else:
                raise unknown(key, "official")
        out[new] = value
    return out


def diffusers_to_official_residual(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers `AutoencoderKLWan(is_residual=True)` state dict to official names."""
    resnets = _resnet_counts(sd, _DIFFUSERS_STAGE, 2, 4, 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if (new := shared_to_official(key)) is None:
            m = _DIFFUSERS_STAGE.fullmatch(key)
            if m is None:
                raise unknown(key, "diffusers")
            blocks, stage, leaf = m.group(1), int(m.group(2)), m.group(5)
            part, inner = _DIFFUSERS_PARTS[blocks]
            if m.group(4) is not None and leaf in RESNET_LEAVES_INV:
                new = f"{part}.{stage}.{inner}.{m.group(4)}.{RESNET_LEAVES_INV[leaf]}"
            elif m.group(4) is None and leaf in RESAMPLE_LEAVES and m.group(3) in ("downsampler", "upsampler"):
                new = f"{part}.{stage}.{inner}.{resnets.get((blocks, stage), 0)}.{leaf}"
            else:
                raise unknown(key, "diffusers")
        out[new] = value
    return out


def infer_residual_vae_config(
    sd: Mapping[str, torch.Tensor],
    *,
    latent_mean: tuple[float, ...] | None = None,
    latent_std: tuple[float, ...] | None = None,
) -> VAEConfig:
    """The `VAEConfig` of a Wan2.2 VAE state dict with official names (meta tensors are fine).

    The latent statistics are not in the checkpoint: Wan2.2's are used when z_dim is 48,
    otherwise `latent_mean` and `latent_std` must be given.
    """
    for required in ("encoder.conv1.weight", "conv2.weight", "decoder.conv1.weight", "decoder.head.2.weight"):
        if required not in sd:
            raise KeyError(f"not a Wan2.2 VAE state dict: missing {required!r}")
    base_dim, in_channels = sd["encoder.conv1.weight"].shape[:2]
    patch = math.isqrt(in_channels // 3)
    if 3 * patch * patch != in_channels:
        raise ValueError(f"encoder.conv1.weight takes {in_channels} channels; expected 3 x a square patch (12)")
    z_dim = sd["conv2.weight"].shape[0]
    resnets = _resnet_counts(sd, _OFFICIAL_STAGE, 2, 3, 1)
    enc = sorted(s for p, s in resnets if p == "encoder.downsamples")
    dec = sorted(s for p, s in resnets if p == "decoder.upsamples")
    if not enc or enc != list(range(len(enc))) or dec != list(range(len(enc))):
        raise ValueError(f"encoder stages {enc} and decoder stages {dec} must both be 0..n-1")
    counts = {resnets[("encoder.downsamples", s)] for s in enc}
    dec_counts = {resnets[("decoder.upsamples", s)] for s in dec}
    if len(counts) != 1 or dec_counts != {next(iter(counts)) + 1}:
        raise ValueError(f"residual blocks per stage: encoder {sorted(counts)}, decoder {sorted(dec_counts)}; "
                         f"expected one count n, and n + 1 in the decoder")
    num_res = counts.pop()
    widths = [sd[f"encoder.downsamples.{s}.downsamples.0.residual.2.weight"].shape[0] for s in enc]
    if any(w % base_dim for w in widths):
        raise ValueError(f"encoder stage widths {widths} are not multiples of base_dim {base_dim}")
    dim_mult = tuple(w // base_dim for w in widths)
    temporal = tuple(f"encoder.downsamples.{s}.downsamples.{num_res}.time_conv.weight" in sd for s in enc[:-1])
    decoder_width = sd["decoder.conv1.weight"].shape[0]
    if decoder_width % dim_mult[-1]:
        raise ValueError(f"decoder.conv1.weight has {decoder_width} channels, not a multiple of {dim_mult[-1]}")
    up_temporal = tuple(f"decoder.upsamples.{s}.upsamples.{num_res + 1}.time_conv.weight" in sd for s in dec[:-1])
    if up_temporal != temporal[::-1]:
        raise ValueError(f"decoder temporal upsamples {up_temporal} do not mirror the encoder's {temporal}")
    latent_mean, latent_std = latent_stats(z_dim, latent_mean, latent_std, (WAN22_LATENT_MEAN, WAN22_LATENT_STD))
    return VAEConfig(base_dim=base_dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=num_res,
                     temporal_downsample=temporal, latent_mean=tuple(latent_mean), latent_std=tuple(latent_std),
                     decoder_base_dim=decoder_width // dim_mult[-1], patch_size=patch, residual=True)
