"""`TokenStream`: the DiT's state between the stages of one forward (embed, blocks, head).

The executor's forward is `head(run_blocks(embed(...)))`; a step cache stops between the stages
and adds a stored residual instead of running the blocks. The stream carries what the remaining
stages need: the fp32 residual stream, its normalized input to the next block, the step's
modulation and the (sharded) RoPE table.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .rope_cache import RopeTable


@dataclass(frozen=True)
class FirstFrameMods:
    """The modulation of latent frame 0's tokens when they have their own timestep (Wan2.2 TI2V's
    conditioning frame, t = 0): `rows` of them in this rank's slice (the slice's first rows; 0
    when the slice holds none), their mods [num_layers, 6, B, dim] and head shift / scale [B, dim]."""

    rows: int
    mods: torch.Tensor
    head_shift: torch.Tensor
    head_scale: torch.Tensor

    def batch_rows(self, start: int, stop: int) -> "FirstFrameMods":
        return replace(self, mods=self.mods[:, :, start:stop], head_shift=self.head_shift[start:stop],
                       head_scale=self.head_scale[start:stop])


@dataclass(frozen=True)
class TokenStream:
    """x: fp32 residual stream [B, S, dim] (this rank's token slice under a shard plan).
    normed: the modulated LayerNorm of x that block `next_block` (or, after the last, the head)
    reads. mods [num_layers, 6, B, dim], head_shift / head_scale [B, dim]: the step's modulation.
    cos, sin: this rank's rows of the RoPE table; rope: the whole table (grid, lengths).
    first: latent frame 0's own modulation (Wan2.2 TI2V image-to-video), else None."""

    x: torch.Tensor
    normed: torch.Tensor | None
    mods: torch.Tensor
    head_shift: torch.Tensor
    head_scale: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    rope: RopeTable
    next_block: int
    first: FirstFrameMods | None = None

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def advanced(self, x: torch.Tensor, normed: torch.Tensor | None, next_block: int) -> "TokenStream":
        return replace(self, x=x, normed=normed, next_block=next_block)

    def rows(self, start: int, stop: int) -> "TokenStream":
        """Batch rows start .. stop - 1 (e.g. one CFG branch of a batched forward)."""
        return replace(self, x=self.x[start:stop], normed=None if self.normed is None else self.normed[start:stop],
                       mods=self.mods[:, :, start:stop], head_shift=self.head_shift[start:stop],
                       head_scale=self.head_scale[start:stop],
                       first=None if self.first is None else self.first.batch_rows(start, stop))

    @staticmethod
    def cat(parts: list["TokenStream"]) -> "TokenStream":
        """Join streams at the same block along the batch (the inverse of `rows`)."""
        if not parts or len({p.next_block for p in parts}) != 1:
            raise ValueError("cat needs at least one stream, all at the same block")
        first = parts[0]
        normed = None if first.normed is None else torch.cat([p.normed for p in parts])
        frame0 = None
        if first.first is not None:
            frame0 = replace(first.first, mods=torch.cat([p.first.mods for p in parts], dim=2),
                             head_shift=torch.cat([p.first.head_shift for p in parts]),
                             head_scale=torch.cat([p.first.head_scale for p in parts]))
        return replace(first, x=torch.cat([p.x for p in parts]), normed=normed,
                       mods=torch.cat([p.mods for p in parts], dim=2),
                       head_shift=torch.cat([p.head_shift for p in parts]),
                       head_scale=torch.cat([p.head_scale for p in parts]), first=frame0)
