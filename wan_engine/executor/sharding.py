"""The interfaces the executor needs from a parallel layout; `wan_engine.parallel` fills them.

The executor only pads, slices and gathers its token sequence, and fetches weights split over
ranks, through these objects, so it never imports the parallel layer (which imports the executor
to install itself: `apply_parallel`, `shard_block_weights`).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TokenShardPlan(Protocol):
    """This rank's share of a token sequence split `degree` ways (`wan_engine.parallel.ShardPlan`).

    degree: how many ranks share the sequence (1: no sharding).
    padded_length(seq_len): `seq_len` rounded up to a multiple of `degree`.
    shard(x, dim): this rank's contiguous slice along `dim` (length a multiple of `degree`).
    gather(x, dim): every rank's slice joined in rank order; collective over the sp group.
    """

    degree: int

    def padded_length(self, seq_len: int) -> int: ...

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor: ...

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor: ...


@runtime_checkable
class WeightShards(Protocol):
    """Per-layer weights held split over ranks (`wan_engine.parallel.ShardedStores`).

    len(): the number of layers. take(i, prefetch): layer i's tensors as the executor's NamedTuple,
    gathered from every rank (collective), valid until the next take; `prefetch` is the layer the
    caller takes next (None: none), which the implementation may start fetching now.
    """

    def __len__(self) -> int: ...

    def take(self, i: int, prefetch: int | None = None): ...
