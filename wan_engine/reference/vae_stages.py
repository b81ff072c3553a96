"""The Wan2.2 VAE's parts that Wan2.1's lacks (official `wan/modules/vae2_2.py`): the 2x2 pixel
patch, and encoder/decoder stages with a parameter-free shortcut around them.

- `patchify`/`unpatchify`: [B, C, T, 2H, 2W] <-> [B, 4C, T, H, W], channel c*4 + 2*dw + dh (the
  official "b c f (h q) (w r) -> b (c r q) f h w": the column offset before the row offset).
- `AvgDown3D`: space-(and time-)to-channel, then the mean over equal channel groups; time is padded
  with zeros *in front* to a multiple of its factor, so frame 0 pairs with a zero frame.
- `DupUp3D`: each channel repeated, then channel-to-space(-and-time); the first chunk of a clip
  drops the first factor_t - 1 frames (official `first_chunk`), so T latent frames give
  factor_t * (T - 1) + 1 frames, as the main path's temporal upsample does.

Both are stateless per frame group, so the streaming (`cache`) and whole-clip modes of
`vae_blocks` hold here too: a shortcut only needs to know whether it sees the clip's first chunk,
which it records in the cache as a marker, as a temporal upsample does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vae_blocks import FeatureCache, Resample, ResidualBlock, apply_layers


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, T, H*p, W*p] -> [B, C*p*p, T, H, W] (channel index c*p*p + dw*p + dh)."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)  # (.., h, dh, w, dw)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`: [B, C*p*p, T, H, W] -> [B, C, T, H*p, W*p]."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # (.., dw, dh, t, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class AvgDown3D(nn.Module):
    """[B, in_dim, T, H, W] -> [B, out_dim, ceil(T/ft), H/fs, W/fs]; no parameters."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        factor = factor_t * factor_s * factor_s
        if (in_dim * factor) % out_dim:
            raise ValueError(f"AvgDown3D: {in_dim} channels x {factor} do not split into {out_dim} groups")
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.group = in_dim * factor // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # channel c, then (dt, dh, dw) fastest-last
        return x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class DupUp3D(nn.Module):
    """[B, in_dim, T, H, W] -> [B, out_dim, ft*T (first chunk: ft*(T-1)+1), H*fs, W*fs]; no parameters."""

    streaming = True

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        factor = factor_t * factor_s * factor_s
        if (out_dim * factor) % in_dim:
            raise ValueError(f"DupUp3D: {out_dim} channels x {factor} are not a multiple of {in_dim}")
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.repeats = out_dim * factor // in_dim

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).reshape(b, self.out_dim, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        first = cache is None or self not in cache
        if cache is not None and first:
            cache.put(self, True)
        return x[:, :, ft - 1:] if first else x


class DownStage(nn.Module):
    """An encoder stage: residual blocks (and a Resample) plus the AvgDown3D shortcut of its input.
    Names as official: `downsamples.{j}`, `avg_shortcut`."""

    streaming = True

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return apply_layers(self.downsamples, x, cache) + self.avg_shortcut(x)


class UpStage(nn.Module):
    """A decoder stage: residual blocks (and a Resample that keeps the width) plus, when it
    upsamples, the DupUp3D shortcut of its input. Names as official: `upsamples.{j}`, `avg_shortcut`."""

    streaming = True

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", out_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        y = apply_layers(self.upsamples, x, cache)
        return y if self.avg_shortcut is None else y + self.avg_shortcut(x, cache)
