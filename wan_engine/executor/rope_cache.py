"""RoPE tables, built once per (grid, padded length, device) and kept by the executor instance."""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..reference.rope import rope_cos_sin


class RopeTable(NamedTuple):
    """The real-valued 3D RoPE table of one token grid.

    cos, sin: fp32 [seq_len, head_dim // 2]; rows past f*h*w (sequence padding) hold the identity
    rotation (cos 1, sin 0), so padded rows pass through unrotated as in the official code.
    real_len: f*h*w, the number of real tokens (also the number of keys attention may see).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    grid: tuple[int, int, int]
    real_len: int
    seq_len: int


def build_rope_table(head_dim: int, grid: tuple[int, int, int], seq_len: int, device) -> RopeTable:
    """The table for `grid` (f, h, w) padded to `seq_len` >= f*h*w tokens, on `device`."""
    cos, sin = rope_cos_sin(head_dim, grid, device=device)
    real_len = cos.shape[0]
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < real_len:
        raise ValueError(f"seq_len must be an int >= the {real_len} tokens of grid {tuple(grid)}; got {seq_len!r}")
    pad = (0, 0, 0, seq_len - real_len)
    return RopeTable(F.pad(cos, pad, value=1.0), F.pad(sin, pad, value=0.0), tuple(grid), real_len, seq_len)


class RopeCache:
    """Least-recently-used RoPE tables of one executor (a request changes the grid rarely)."""

    def __init__(self, head_dim: int, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.head_dim = head_dim
        self.capacity = capacity
        self._tables: OrderedDict[tuple, RopeTable] = OrderedDict()

    def get(self, grid: tuple[int, int, int], seq_len: int, device: torch.device) -> RopeTable:
        key = (tuple(int(g) for g in grid), seq_len, torch.device(device))
        table = self._tables.get(key)
        if table is None:
            table = build_rope_table(self.head_dim, key[0], seq_len, key[2])
            self._tables[key] = table
            if len(self._tables) > self.capacity:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table

    def __len__(self) -> int:
        return len(self._tables)
