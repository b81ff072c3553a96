"""Parallel Wan VAE decode: every rank decodes a horizontal slab of the video.

The official code decodes on rank 0 alone, and at 720p that decode is the peak-memory point of a
whole run. Here the latent rows are split over the ranks of a group and each rank runs the
official chunked decode (one latent frame at a time, the causal `FeatureCache` carried between
chunks) on its slab, with the reference decoder's own modules and parameters; `vae_rows` says why
the result is the single-process decode, row for row.

Peak activation memory per rank is about (own rows + 2 halo rows) / rows of the single-process
decode; the gathered output video is the only full-size tensor (see `output`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from wan_engine.reference.vae import WanVAE
from wan_engine.reference.vae_blocks import FeatureCache
from wan_engine.reference.vae_stages import unpatchify

from .comm import group_size
from .halo import gather_rows, row_ranges
from .vae_rows import RowSplit, run_rows

OUTPUTS = ("all", "rank0")


@torch.no_grad()
def parallel_vae_decode(
    vae: WanVAE,
    latents: torch.Tensor,
    group: dist.ProcessGroup | None,
    *,
    output: str = "all",
) -> torch.Tensor | None:
    """`vae.decode(latents)` (chunked) with the rows split over the ranks of `group`.

    latents: normalized `[B, z_dim, f, h, w]`, the same tensor on every rank of `group` (the
    world group when every rank holds the final latents, or one CFG branch's `mesh.sp_group`).
    Needs h >= the group size (each rank takes >= 1 latent row; h need not be divisible).
    Returns the video `[B, 3, 1 + (f-1)*ts, h*ss, w*ss]` in [-1, 1] (ts, ss: the VAE's temporal and
    spatial strides) on every rank with output="all", or on group rank 0 only (None elsewhere)
    with output="rank0". group=None decodes on this process alone.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    z_dim = vae.config.z_dim
    if latents.ndim != 5 or latents.shape[1] != z_dim or min(latents.shape[2:]) < 1:
        raise ValueError(f"latents must have shape [B, {z_dim}, f, h, w] with f, h, w >= 1, "
                         f"got {tuple(latents.shape)}")
    world = group_size(group)
    if latents.shape[3] < world:
        raise ValueError(f"latents height h={latents.shape[3]} is smaller than the {world} ranks of the "
                         f"decode group; every rank needs at least one latent row")
    ranges = row_ranges(latents.shape[3], world)
    split = RowSplit(group, ranges)
    start, stop = ranges[split.rank]
    x = vae.conv2(vae.denormalize_latents(latents[..., start:stop, :]))  # per pixel: no halo

    frames = 1 + (x.shape[2] - 1) * vae.config.temporal_stride
    stride = vae.config.spatial_stride
    video = x.new_empty(x.shape[0], 3, frames, (stop - start) * stride, x.shape[4] * stride)
    decoder = vae.decoder
    layers = [decoder.conv1, *decoder.middle, *decoder.upsamples, *decoder.head]
    cache, filled = FeatureCache(), 0
    for i in range(x.shape[2]):
        chunk = unpatchify(run_rows(layers, x[:, :, i:i + 1], cache, split), decoder.patch)
        video[:, :, filled:filled + chunk.shape[2]] = chunk.clamp_(-1.0, 1.0)
        filled += chunk.shape[2]
    if filled != frames:
        raise RuntimeError(f"decoded {filled} frames, expected {frames}")  # reference changed shape
    heights = [(b - a) * stride for a, b in ranges]
    return gather_rows(video, group, heights, to_rank0_only=output == "rank0")
