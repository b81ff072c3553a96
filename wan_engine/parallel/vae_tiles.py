"""Tiled VAE decode over several ranks: the tiles are shared out, rank 0 blends them.

The row-parallel decode (`vae_decode.py`) is the lossless multi-rank decode; a tiled decode
(lossy at the seams, for memory) composes with several ranks this way instead:
- every rank runs the decoder's trunk on the whole latent frames (latent resolution: small) and
  decodes the tiles whose index is its rank modulo the group size, each with its own cache;
- rank 0 receives the tiles in index order and blends them into the video in that order, so the
  video equals the one-process tiled decode of the same plan bit for bit (same tiles, same sums).
Each rank's peak activation memory is one tile's, as in one process; the ranks decode at once.
Every rank must decode with the same plan: `agree_on_plan` takes the smallest tile any rank asks
for (an `auto` plan is sized from each rank's own free memory).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from wan_engine.reference.vae import WanVAE
from wan_engine.vae.static import StaticChunks, decoder_parts
from wan_engine.vae.tiling import TileCanvas, TilePlan, decode_tile, trunk_features

from .comm import group_rank, group_size

OUTPUTS = ("all", "rank0")


def agree_on_plan(plan: TilePlan, latent_hw: tuple[int, int], group: dist.ProcessGroup | None,
                  device: torch.device) -> TilePlan:
    """The plan every rank of `group` decodes with: each tile side the smallest asked for (a rank
    without tiling asks for the whole frame), the overlap the smallest too."""
    if group is None or group_size(group) == 1:
        return plan
    h, w = latent_hw
    tile = plan.tile or (h, w)
    ask = torch.tensor([min(tile[0], h), min(tile[1], w), plan.overlap], dtype=torch.int64, device=device)
    dist.all_reduce(ask, op=dist.ReduceOp.MIN, group=group)
    th, tw, overlap = (int(v) for v in ask.tolist())
    if (th, tw) == (h, w):
        return TilePlan()
    return TilePlan((th, tw), overlap=min(overlap, min(th, tw) - 1))


@torch.no_grad()
def parallel_tiled_decode(vae: WanVAE, latents: torch.Tensor, plan: TilePlan, group: dist.ProcessGroup | None,
                          *, parts: tuple[StaticChunks, StaticChunks] | None = None,
                          output: str = "rank0") -> torch.Tensor | None:
    """`tiled_decode(vae, latents, plan)` with the tiles shared over the ranks of `group`.

    latents: the same normalized [B, z_dim, f, h, w] on every rank; `plan` the same on every rank
    (see `agree_on_plan`). Returns the video on group rank 0 (output="rank0", None elsewhere) or
    on every rank (output="all"). group=None decodes every tile on this process.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    trunk, tail = decoder_parts(vae) if parts is None else parts
    features = trunk_features(vae, latents, trunk)
    canvas = TileCanvas(vae, features, plan)
    world, rank = group_size(group), group_rank(group)
    own = {i: decode_tile(tail, features, tile) for i, tile in enumerate(canvas.tiles) if i % world == rank}
    del features
    if rank != 0:
        head = dist.get_global_rank(group, 0)
        for index in sorted(own):
            dist.send(own.pop(index).contiguous(), dst=head, group=group)
    else:
        for index in range(len(canvas.tiles)):
            owner = index % world
            if owner == 0:
                tile = own.pop(index)
            else:
                tile = torch.empty(canvas.tile_shape(index), device=canvas.device)
                dist.recv(tile, src=dist.get_global_rank(group, owner), group=group)
            canvas.add(index, tile)
    video = canvas.video() if rank == 0 else None
    if output == "rank0":
        return video
    if video is None:
        video = torch.empty(canvas.shape, device=canvas.device)
    if group is not None and world > 1:
        dist.broadcast(video, src=dist.get_global_rank(group, 0), group=group)
    return video
