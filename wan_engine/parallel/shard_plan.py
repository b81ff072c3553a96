"""Where the DiT's token sequence is cut across the sequence-parallel ranks, and where it is joined.

`ShardPlan` implements the executor's `TokenShardPlan` interface. The executor holds it as data
(no hooks): after patchifying, it pads the token sequence
to a multiple of the sp degree, keeps this rank's contiguous slice (`shard`) together with the
same rows of the RoPE table, runs every block on the slice, and `gather`s the head's output before
unpatchify. Self-attention sees the whole sequence through the sequence-parallel attention op,
with the global number of real tokens as `kv_len`, so padding never enters a softmax (the
official code attends to its padding; this plan does not). Cross-attention needs no plan: every
rank holds the full text K/V.

Slice i belongs to sp rank i (mesh.py's ordering, the one Ulysses, ring and USP assume).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .comm import gather_sequence, padded_length
from .mesh import ParallelMesh


@dataclass(frozen=True)
class ShardPlan:
    """This rank's share of a token sequence split `degree` ways over the sp `group`.

    group: the sequence-parallel process group (None only when degree == 1).
    rank:  this process's index in `group`, i.e. the slice it holds (0 <= rank < degree).
    """

    group: dist.ProcessGroup | None
    degree: int
    rank: int

    def __post_init__(self):
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise ValueError(f"degree must be an int >= 1, got {self.degree!r}")
        if not 0 <= self.rank < self.degree:
            raise ValueError(f"rank must be in [0, {self.degree}) (the degree), got {self.rank}")
        if (self.group is None) != (self.degree == 1):
            raise ValueError(f"a plan of degree {self.degree} needs "
                             f"{'a process group' if self.degree > 1 else 'group=None'}")

    @classmethod
    def from_mesh(cls, mesh: ParallelMesh) -> "ShardPlan":
        """The plan of `mesh`'s sp group (ring x ulysses ranks of this rank's CFG branch)."""
        return cls(group=mesh.sp_group, degree=mesh.sp_size, rank=mesh.sp_rank)

    def padded_length(self, seq_len: int) -> int:
        """`seq_len` rounded up to a multiple of the degree (the official `ceil(L / sp) * sp`)."""
        return padded_length(seq_len, self.degree)

    def local_length(self, padded_len: int) -> int:
        """Tokens per rank of a sequence padded to `padded_len` (a multiple of the degree)."""
        if padded_len % self.degree:
            raise ValueError(f"padded_len must be a multiple of the sp degree {self.degree}, got {padded_len}")
        return padded_len // self.degree

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous slice of `x` along `dim`, whose length must be a multiple of the
        degree: `[..., S, ...]` -> `[..., S / degree, ...]` (a view, no copy)."""
        local = self.local_length(x.shape[dim])
        return x.narrow(dim, self.rank * local, local)

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Every rank's slice, joined in rank order: `[..., S / degree, ...]` -> `[..., S, ...]`.
        Collective over `group`: every rank of it must call it with the same shape."""
        return gather_sequence(x, self.group, seq_dim=dim)
