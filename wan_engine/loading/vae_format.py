"""Wan VAE checkpoint formats: official (`Wan2.1_VAE.pth`) <-> diffusers `AutoencoderKLWan`.
The Wan2.2 VAE (`Wan2.2_VAE.pth`) is recognised here and mapped by `vae_residual_format`.

Name facts (from diffusers' Wan VAE conversion and `autoencoder_kl_wan.py`); the names outside
the stages are in `vae_names`:

official                                  diffusers
encoder.downsamples.N                     encoder.down_blocks.N (the same flat list)
decoder.upsamples.N (flat: per stage       decoder.up_blocks.S.resnets.J and
  num_res_blocks+1 residual blocks,          decoder.up_blocks.S.upsamplers.0
  then one Resample except the last)

The decoder's flat <-> nested indices are worked out from the key set itself (where the Resample
entries sit, or how many resnets each up block has), so any num_res_blocks and stage count map.
The checkpoint carries no config; `infer_vae_config` reads it off key names and tensor shapes.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from wan_engine.configs import WAN21_LATENT_MEAN, WAN21_LATENT_STD, VAEConfig

from .vae_names import (
    ATTENTION_LEAVES as _ATTENTION_LEAVES,
    RESAMPLE_LEAVES as _RESAMPLE_LEAVES,
    RESNET_LEAVES as _RESNET_LEAVES,
    RESNET_LEAVES_INV as _RESNET_LEAVES_INV,
    shared_to_diffusers,
    latent_stats,
    shared_to_official,
    unknown as _unknown,
)
from .vae_residual_format import (
    diffusers_to_official_residual,
    infer_residual_vae_config,
    is_residual_layout,
    official_to_diffusers_residual,
)

_OFFICIAL_DOWN = re.compile(r"encoder\.downsamples\.(\d+)\.(.+)")
_OFFICIAL_UP = re.compile(r"decoder\.upsamples\.(\d+)\.(.+)")
_DIFFUSERS_DOWN = re.compile(r"encoder\.down_blocks\.(\d+)\.(.+)")
_DIFFUSERS_UP = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)")


def _flat_leaf_to_diffusers(key: str, leaf: str) -> str:
    """A leaf of a flat-list entry (residual block, attention or Resample)."""
    if leaf in _RESNET_LEAVES:
        return _RESNET_LEAVES[leaf]
    if leaf in _ATTENTION_LEAVES or leaf in _RESAMPLE_LEAVES:
        return leaf
    raise _unknown(key, "official")


def _flat_leaf_to_official(key: str, leaf: str) -> str:
    if leaf in _RESNET_LEAVES_INV:
        return _RESNET_LEAVES_INV[leaf]
    if leaf in _ATTENTION_LEAVES or leaf in _RESAMPLE_LEAVES:
        return leaf
    raise _unknown(key, "diffusers")


def _resample_positions(keys) -> list[int]:
    """Flat indices of the decoder's Resample entries, in order."""
    found = set()
    for key in keys:
        m = _OFFICIAL_UP.fullmatch(key)
        if m and m.group(2) in _RESAMPLE_LEAVES:
            found.add(int(m.group(1)))
    return sorted(found)


def official_to_diffusers_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official Wan2.1 VAE state dict to diffusers `AutoencoderKLWan` names (same tensors).

    Raises KeyError naming any key that is not part of the official layout, and for attention
    blocks inside decoder stages, which diffusers' Wan2.1 decoder does not have.
    """
    if is_residual_layout(sd):
        return official_to_diffusers_residual(sd)
    resamples = _resample_positions(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if (new := shared_to_diffusers(key)) is not None:
            pass
        elif m := _OFFICIAL_DOWN.fullmatch(key):
            new = f"encoder.down_blocks.{m.group(1)}.{_flat_leaf_to_diffusers(key, m.group(2))}"
        elif m := _OFFICIAL_UP.fullmatch(key):
            idx, leaf = int(m.group(1)), m.group(2)
            stage = sum(r < idx for r in resamples)
            if idx in resamples and leaf in _RESAMPLE_LEAVES:
                new = f"decoder.up_blocks.{stage}.upsamplers.0.{leaf}"
            elif idx in resamples:
                raise _unknown(key, "official")
            elif leaf in _RESNET_LEAVES:
                first = resamples[stage - 1] + 1 if stage else 0
                new = f"decoder.up_blocks.{stage}.resnets.{idx - first}.{_RESNET_LEAVES[leaf]}"
            elif leaf in _ATTENTION_LEAVES:
                raise _unknown(key, "official", "diffusers' decoder stages have no attention blocks")
            else:
                raise _unknown(key, "official")
        else:
            raise _unknown(key, "official")
        out[new] = value
    return out


def diffusers_to_official_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers `AutoencoderKLWan` (Wan2.1 layout) state dict to official names.

    Raises KeyError naming any key outside that layout.
    """
    if is_residual_layout(sd):
        return diffusers_to_official_residual(sd)
    resnets_per_stage: dict[int, int] = {}
    has_upsampler: set[int] = set()
    for key in sd:
        if m := _DIFFUSERS_UP.fullmatch(key):
            stage = int(m.group(1))
            if m.group(3) is None:
                has_upsampler.add(stage)
            else:
                resnets_per_stage[stage] = max(resnets_per_stage.get(stage, 0), int(m.group(3)) + 1)
    first_index, next_index = {}, 0
    for stage in range(max([*resnets_per_stage, *has_upsampler], default=-1) + 1):
        first_index[stage] = next_index
        next_index += resnets_per_stage.get(stage, 0) + (stage in has_upsampler)

    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if (new := shared_to_official(key)) is not None:
            pass
        elif m := _DIFFUSERS_DOWN.fullmatch(key):
            new = f"encoder.downsamples.{m.group(1)}.{_flat_leaf_to_official(key, m.group(2))}"
        elif m := _DIFFUSERS_UP.fullmatch(key):
            stage, leaf = int(m.group(1)), m.group(4)
            if m.group(3) is None and leaf in _RESAMPLE_LEAVES:
                new = f"decoder.upsamples.{first_index[stage] + resnets_per_stage.get(stage, 0)}.{leaf}"
            elif m.group(3) is not None and leaf in _RESNET_LEAVES_INV:
                idx = first_index[stage] + int(m.group(3))
                new = f"decoder.upsamples.{idx}.{_RESNET_LEAVES_INV[leaf]}"
            else:
                raise _unknown(key, "diffusers")
        else:
            raise _unknown(key, "diffusers")
        out[new] = value
    return out


def _encoder_entries(sd: Mapping[str, torch.Tensor]) -> list[tuple[str, int]]:
    """The encoder's flat list as (kind, index): kind is 'res', 'attn', 'down2d' or 'down3d'."""
    leaves: dict[int, set[str]] = {}
    for key in sd:
        if m := _OFFICIAL_DOWN.fullmatch(key):
            leaves.setdefault(int(m.group(1)), set()).add(m.group(2))
    entries = []
    for idx in sorted(leaves):
        have = leaves[idx]
        if "residual.2.weight" in have:
            kind = "res"
        elif "to_qkv.weight" in have:
            kind = "attn"
        elif "resample.1.weight" in have:
            kind = "down3d" if "time_conv.weight" in have else "down2d"
        else:
            raise ValueError(f"encoder.downsamples.{idx} is neither a residual, attention nor resample block")
        entries.append((kind, idx))
    return entries


def infer_vae_config(
    sd: Mapping[str, torch.Tensor],
    *,
    latent_mean: tuple[float, ...] | None = None,
    latent_std: tuple[float, ...] | None = None,
) -> VAEConfig:
    """The `VAEConfig` of a Wan2.1 VAE state dict (official or diffusers names; meta tensors are fine).

    base_dim, z_dim, dim_mult, num_res_blocks, attn_scales and temporal_downsample come from key
    names and shapes. The checkpoint does not store the latent statistics: the Wan2.1 values are
    used when z_dim is 16, otherwise `latent_mean` and `latent_std` must be given.
    """
    if "encoder.conv_in.weight" in sd:
        sd = diffusers_to_official_vae(sd)
    if is_residual_layout(sd):
        return infer_residual_vae_config(sd, latent_mean=latent_mean, latent_std=latent_std)
    for required in ("encoder.conv1.weight", "conv2.weight", "decoder.conv1.weight"):
        if required not in sd:
            raise KeyError(f"not a Wan2.1 VAE state dict: missing {required!r}")
    base_dim = sd["encoder.conv1.weight"].shape[0]
    z_dim = sd["conv2.weight"].shape[0]
    if sd["encoder.conv1.weight"].shape[1] != 3:
        raise KeyError(f"not a Wan2.1 VAE: its first convolution takes {sd['encoder.conv1.weight'].shape[1]} "
                       f"channels, not 3 (and its stages are not Wan2.2's residual ones)")

    # Split the encoder's flat list into stages at its Resample entries.
    stages: list[dict] = [{"res": [], "attn": False}]
    temporal: list[bool] = []
    for kind, idx in _encoder_entries(sd):
        if kind == "res":
            stages[-1]["res"].append(sd[f"encoder.downsamples.{idx}.residual.2.weight"].shape[0])
        elif kind == "attn":
            stages[-1]["attn"] = True
        else:
            temporal.append(kind == "down3d")
            stages.append({"res": [], "attn": False})

    counts = {len(s["res"]) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every encoder stage needs the same, non-zero number of residual blocks; got "
                         f"{[len(s['res']) for s in stages]}")
    dim_mult = []
    for i, stage in enumerate(stages):
        out_dims = set(stage["res"])
        if len(out_dims) != 1 or next(iter(out_dims)) % base_dim:
            raise ValueError(f"encoder stage {i}: residual widths {stage['res']} are not one multiple of "
                             f"base_dim {base_dim}")
        dim_mult.append(next(iter(out_dims)) // base_dim)
    attn_scales = tuple(1.0 / 2**i for i, s in enumerate(stages) if s["attn"])

    decoder_in = sd["decoder.conv1.weight"].shape
    if tuple(decoder_in[:2]) != (base_dim * dim_mult[-1], z_dim):
        raise ValueError(f"decoder.conv1.weight has shape {tuple(decoder_in)}; the encoder implies "
                         f"[{base_dim * dim_mult[-1]}, {z_dim}, ...]")
    decoder_time_convs = sum(k.startswith("decoder.upsamples.") and k.endswith("time_conv.weight") for k in sd)
    if decoder_time_convs != sum(temporal):
        raise ValueError(f"decoder has {decoder_time_convs} temporal upsamples but the encoder has "
                         f"{sum(temporal)} temporal downsamples")

    latent_mean, latent_std = latent_stats(z_dim, latent_mean, latent_std, (WAN21_LATENT_MEAN, WAN21_LATENT_STD))
    return VAEConfig(
        base_dim=base_dim, z_dim=z_dim, dim_mult=tuple(dim_mult), num_res_blocks=counts.pop(),
        attn_scales=attn_scales, temporal_downsample=tuple(temporal),
        latent_mean=tuple(latent_mean), latent_std=tuple(latent_std),
    )
