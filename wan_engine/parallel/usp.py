"""Unified sequence parallelism (USP): Ulysses inside, ring outside.

The sp ranks form a (ring, ulysses) grid with Ulysses fastest (mesh.py), so sp rank
`g * U + u` holds global shard `g * U + u`. The Ulysses all-to-all within ring row g gathers
shards g*U .. g*U+U-1, i.e. the contiguous ring block g of U * S_local tokens, for H/U heads; ring
attention then runs over those blocks with the global `kv_len` unchanged, and a second all-to-all
returns each rank its own shard with all heads. Either group may be None (degree 1), which
reduces this to plain Ulysses, plain ring, or local attention.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import LocalAttention, check_heads_divisible, check_qkv, group_size, normalize_kv_len
from .mesh import ParallelMesh
from .ring import ring_attention
from .ulysses import ulysses_around


def usp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ulysses_group: dist.ProcessGroup | None,
    ring_group: dist.ProcessGroup | None,
    local_attn: LocalAttention,
    kv_len: int | None = None,
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over a sequence sharded across U * R sp ranks (see the module docstring).

    q `[B, Sq_local, H, D]`, k/v `[B, Sk_local, H, D]`: this rank's shards of a global sequence
    padded at its end to U * R * S_local; `kv_len` is the global number of real keys. H must be
    divisible by U. Returns out `[B, Sq_local, H, D]` in q's dtype, and with `return_lse` also
    lse `[B, H, Sq_local]` fp32.
    """
    check_qkv(q, k, v)
    ulysses, ring = group_size(ulysses_group), group_size(ring_group)
    check_heads_divisible(q.shape[2], ulysses)
    kv_len = normalize_kv_len(kv_len, ulysses * ring * k.shape[1])

    def ring_over_gathered_blocks(q_, k_, v_):
        return ring_attention(q_, k_, v_, ring_group, local_attn, kv_len, return_lse=True)

    return ulysses_around(q, k, v, ulysses_group, ring_over_gathered_blocks, return_lse)


def sequence_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mesh: ParallelMesh,
    local_attn: LocalAttention,
    kv_len: int | None = None,
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`usp_attention` over the Ulysses and ring groups of `mesh` (shapes as there)."""
    return usp_attention(
        q, k, v, mesh.ulysses_group, mesh.ring_group, local_attn, kv_len, return_lse=return_lse
    )
