"""Parallel Wan VAE encode: every rank encodes a horizontal slab of the video.

I2V/FLF2V encode an 81-frame conditioning video at the request's size once per request. The
official code runs that encode whole on every rank. Here the latent rows are split over the ranks of
a group. Each rank runs the official chunked encode on its pixel rows (8 per latent row, 16 for
the Wan2.2 VAE): frame 0, then 4-frame chunks, with the causal `FeatureCache` carried between
chunks. It uses the reference encoder's own modules and parameters. Then the latent slabs are gathered, so every rank holds the
whole latents. `vae_rows` says why the slabs are the single-process rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from wan_engine.reference.vae import WanVAE, encode_chunks
from wan_engine.reference.vae_blocks import FeatureCache
from wan_engine.reference.vae_stages import patchify

from .comm import group_size
from .halo import gather_rows, row_ranges
from .vae_rows import RowSplit, run_rows


@torch.no_grad()
def parallel_vae_encode(vae: WanVAE, video: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`vae.encode(video)` (chunked) with the latent rows split over the ranks of `group`.

    video: `[B, 3, 4n+1, H, W]` in [-1, 1], the same tensor on every rank of `group`; H and W
    multiples of the spatial stride, and H / stride >= the group size (each rank takes >= 1 latent
    row). Returns the normalized latents `[B, z_dim, n+1, H/stride, W/stride]` on every rank.
    group=None encodes on this process alone.
    """
    vae._check_video(video)
    stride = vae.config.spatial_stride
    rows, world = video.shape[3] // stride, group_size(group)
    if rows < world:
        raise ValueError(f"video height {video.shape[3]} gives {rows} latent rows, fewer than the {world} ranks of "
                         f"the encode group; every rank needs at least one latent row")
    ranges = row_ranges(rows, world)
    split = RowSplit(group, ranges)
    start, stop = ranges[split.rank]
    slab = video[..., start * stride:stop * stride, :]
    encoder = vae.encoder
    layers = [encoder.conv1, *encoder.downsamples, *encoder.middle, *encoder.head]
    cache = FeatureCache()
    features = torch.cat([run_rows(layers, patchify(chunk, encoder.patch), cache, split)
                          for chunk in encode_chunks(slab)], dim=2)
    mu = vae.conv1(features)[:, : vae.config.z_dim]  # per pixel: no halo
    return gather_rows(vae.normalize_latents(mu), group, [b - a for a, b in ranges])
