"""Row-split tensors: balanced row ranges, one-row halo exchange with neighbours, row gathers.

A tensor `[..., H, W]` is cut into P contiguous row slabs in rank order, the first `H % P` ranks
holding one row more. Convolutions over a slab need the neighbours' edge rows (the halo);
`exchange_halo` fetches them with point-to-point messages and puts zeros at the image borders,
where a "same"-padded convolution pads with zeros anyway.

`group=None` means a single rank, as everywhere in this package.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import group_rank, group_size


def row_ranges(height: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [start, stop) row ranges covering `height` rows, sizes differing by <= 1.

    Raises ValueError unless 1 <= parts <= height (every part needs at least one row).
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if height < parts:
        raise ValueError(f"height {height} cannot be split into {parts} row slabs of at least one row; "
                         f"use at most {height} ranks or a larger height")
    base, extra = divmod(height, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        ranges.append((start, stop))
        start = stop
    return ranges


def exchange_halo(x: torch.Tensor, group: dist.ProcessGroup | None, width: int = 1) -> torch.Tensor:
    """`x [..., h, W]` (this rank's slab) -> `[..., width + h + width, W]` with `width` rows from
    the rank above and below prepended/appended; zeros beyond the first and last rank.

    Every rank's slab must have at least `width` rows and the same leading/trailing shape.
    """
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims [..., H, W], got shape {tuple(x.shape)}")
    if width < 0 or x.shape[-2] < width:
        raise ValueError(f"halo width must be in [0, {x.shape[-2]}] (the slab height), got {width}")
    if width == 0:
        return x
    world, rank = group_size(group), group_rank(group)
    edge_shape = (*x.shape[:-2], width, x.shape[-1])
    above = x.new_zeros(edge_shape)
    below = x.new_zeros(edge_shape)
    if world > 1:
        ops = []
        if rank > 0:
            peer = dist.get_global_rank(group, rank - 1)
            ops.append(dist.P2POp(dist.isend, x[..., :width, :].contiguous(), peer, group))
            ops.append(dist.P2POp(dist.irecv, above, peer, group))
        if rank < world - 1:
            peer = dist.get_global_rank(group, rank + 1)
            ops.append(dist.P2POp(dist.isend, x[..., -width:, :].contiguous(), peer, group))
            ops.append(dist.P2POp(dist.irecv, below, peer, group))
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return torch.cat([above, x, below], dim=-2)


def gather_rows(
    x: torch.Tensor,
    group: dist.ProcessGroup | None,
    heights: list[int],
    to_rank0_only: bool = False,
) -> torch.Tensor | None:
    """Concatenate every rank's slab `[..., heights[r], W]` along rows in rank order.

    Slabs may differ in height by the `heights` list (one entry per rank); they are padded to
    the tallest for the collective and trimmed after. Returns `[..., sum(heights), W]` on every
    rank, or with `to_rank0_only` on group rank 0 only (None elsewhere), which avoids holding
    the full tensor on the other ranks.
    """
    world, rank = group_size(group), group_rank(group)
    if len(heights) != world:
        raise ValueError(f"heights needs one entry per rank ({world}), got {len(heights)}")
    if x.shape[-2] != heights[rank]:
        raise ValueError(f"rank {rank} slab has {x.shape[-2]} rows, heights says {heights[rank]}")
    if world == 1:
        return x
    tallest = max(heights)
    padded = torch.nn.functional.pad(x, (0, 0, 0, tallest - x.shape[-2])).contiguous()
    if to_rank0_only:
        pieces = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
        dist.gather(padded, pieces, dst=dist.get_global_rank(group, 0), group=group)
        if rank != 0:
            return None
    else:
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded, group=group)
    return torch.cat([p[..., :h, :] for p, h in zip(pieces, heights)], dim=-2)
