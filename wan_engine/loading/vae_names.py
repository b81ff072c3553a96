"""Names the Wan2.1 and Wan2.2 VAE layouts share, official <-> diffusers `AutoencoderKLWan`.

official                                  diffusers
conv1 / conv2                             quant_conv / post_quant_conv
{enc,dec}oder.conv1                       {enc,dec}oder.conv_in
{enc,dec}oder.head.0.gamma / head.2.*     {enc,dec}oder.norm_out.gamma / conv_out.*
{enc,dec}oder.middle.0 / .1 / .2          {enc,dec}oder.mid_block.resnets.0 / attentions.0 / resnets.1
residual.0.gamma / residual.2.* /         norm1.gamma / conv1.* / norm2.gamma / conv2.* /
  residual.3.gamma / residual.6.* / shortcut.*   conv_shortcut.*
attention (norm, to_qkv, proj) and resample (resample.1, time_conv) leaves keep their names.

The stages differ (flat lists in Wan2.1, one module per stage in Wan2.2): see `vae_format` and
`vae_residual_format`.
"""
from __future__ import annotations

import re

RESNET_LEAVES = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
RESNET_LEAVES_INV = {v: k for k, v in RESNET_LEAVES.items()}
ATTENTION_LEAVES = frozenset({"norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias"})
RESAMPLE_LEAVES = frozenset({"resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias"})

_FIXED = {
    "conv1.weight": "quant_conv.weight",
    "conv1.bias": "quant_conv.bias",
    "conv2.weight": "post_quant_conv.weight",
    "conv2.bias": "post_quant_conv.bias",
}
for _part in ("encoder", "decoder"):
    for _leaf in ("weight", "bias"):
        _FIXED[f"{_part}.conv1.{_leaf}"] = f"{_part}.conv_in.{_leaf}"
        _FIXED[f"{_part}.head.2.{_leaf}"] = f"{_part}.conv_out.{_leaf}"
    _FIXED[f"{_part}.head.0.gamma"] = f"{_part}.norm_out.gamma"
_FIXED_INV = {v: k for k, v in _FIXED.items()}

_OFFICIAL_MIDDLE = re.compile(r"(encoder|decoder)\.middle\.(\d+)\.(.+)")
_DIFFUSERS_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def latent_stats(z_dim: int, latent_mean, latent_std, release: tuple[tuple[float, ...], tuple[float, ...]]):
    """(mean, std) of the latents: as given, else the release's (`release`) when z_dim matches
    it; the checkpoints do not store them."""
    if (latent_mean is None) != (latent_std is None):
        raise ValueError("pass both latent_mean and latent_std, or neither")
    if latent_mean is None:
        if z_dim != len(release[0]):
            raise ValueError(f"z_dim is {z_dim}: pass latent_mean and latent_std ({z_dim} values each); "
                             f"the checkpoint does not store them")
        return release
    return tuple(latent_mean), tuple(latent_std)


def unknown(key: str, fmt: str, why: str = "") -> KeyError:
    return KeyError(f"unknown {fmt} Wan VAE key {key!r}{': ' + why if why else ''}")


def shared_to_diffusers(key: str) -> str | None:
    """The diffusers name of an official key outside the stages; None for a stage key."""
    if key in _FIXED:
        return _FIXED[key]
    if m := _OFFICIAL_MIDDLE.fullmatch(key):
        part, idx, leaf = m.group(1), int(m.group(2)), m.group(3)
        if idx in (0, 2) and leaf in RESNET_LEAVES:
            return f"{part}.mid_block.resnets.{idx // 2}.{RESNET_LEAVES[leaf]}"
        if idx == 1 and leaf in ATTENTION_LEAVES:
            return f"{part}.mid_block.attentions.0.{leaf}"
        raise unknown(key, "official")
    return None


def shared_to_official(key: str) -> str | None:
    """The official name of a diffusers key outside the stages; None for a stage key."""
    if key in _FIXED_INV:
        return _FIXED_INV[key]
    if m := _DIFFUSERS_MID.fullmatch(key):
        part, kind, idx, leaf = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        if kind == "resnets" and idx in (0, 1) and leaf in RESNET_LEAVES_INV:
            return f"{part}.middle.{2 * idx}.{RESNET_LEAVES_INV[leaf]}"
        if kind == "attentions" and idx == 0 and leaf in ATTENTION_LEAVES:
            return f"{part}.middle.1.{leaf}"
        raise unknown(key, "diffusers")
    return None
