"""Ulysses (all-to-all) sequence-parallel attention.

Each of P ranks holds a contiguous sequence shard of every head. One all-to-all trades it for the
whole sequence of H/P heads, attention runs locally and exactly, and a second all-to-all trades
back. Communication per rank is O(S*H*D / P) and independent of the attention itself, but P must
divide the head count: the rest of a large degree goes to ring attention (see usp.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from .comm import (
    LocalAttention,
    all_to_all,
    all_to_all_many,
    check_heads_divisible,
    check_qkv,
    gather_heads_scatter_sequence,
    group_size,
    normalize_kv_len,
    scatter_heads_gather_sequence,
)

# inner(q, k, v) -> (out, lse) over the full (Ulysses-gathered) sequence of a slice of the heads.
InnerAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def ulysses_around(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    inner: InnerAttention,
    return_lse: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run `inner` between the two Ulysses all-to-alls over `group` (inputs already checked).

    q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]` are this rank's shards; returns out `[B, Sq, H, D]`
    (and lse `[B, H, Sq]` fp32).
    """
    # Heads are scattered (dim 2), the sequence gathered (dim 1); one collective when possible.
    if q.shape == k.shape:
        q, k, v = all_to_all_many((q, k, v), group, scatter_dim=2, gather_dim=1)
    else:
        q = scatter_heads_gather_sequence(q, group)
        k, v = all_to_all_many((k, v), group, scatter_dim=2, gather_dim=1)
    out, lse = inner(q, k, v)
    out = gather_heads_scatter_sequence(out, group)
    if not return_lse:
        return out
    # lse [B, H/P, P*Sq] -> [B, H, Sq]: sequence back to its owners, heads gathered.
    return out, all_to_all(lse, group, scatter_dim=2, gather_dim=1)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    local_attn: LocalAttention,
    kv_len: int | None = None,
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over a sequence sharded across the ranks of `group` (None: one rank).

    q `[B, Sq_local, H, D]`, k/v `[B, Sk_local, H, D]`: this rank's contiguous shards of a global
    sequence padded at its end to P * S_local. `kv_len` is the global number of real keys.
    H must be divisible by P. Returns out `[B, Sq_local, H, D]` in q's dtype, and with
    `return_lse` also lse `[B, H, Sq_local]` fp32.
    """
    check_qkv(q, k, v)
    world = group_size(group)
    check_heads_divisible(q.shape[2], world)
    kv_len = normalize_kv_len(kv_len, world * k.shape[1])
    return ulysses_around(
        q, k, v, group, lambda q_, k_, v_: local_attn(q_, k_, v_, kv_len), return_lse
    )
