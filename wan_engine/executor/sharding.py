"""The interface the executor needs from a sequence-parallel layout; `wan_engine.parallel` fills it.

The executor only pads, slices and gathers its token sequence through this object, so it never
imports the parallel layer (which imports the executor to install itself: `apply_parallel`).
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
