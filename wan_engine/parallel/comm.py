"""Collectives on `[B, S, H, D]` activations for sequence parallelism.

`group=None` means a single rank everywhere in this package: the helpers return their input
unchanged (or its padded / trimmed form), so the same model code runs with and without a mesh.
This is deliberately NOT torch.distributed's convention (None = the world group): a group is
always passed explicitly.

All helpers are for inference: they do not define gradients through the collectives.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F


def group_size(group: dist.ProcessGroup | None) -> int:
    """Number of ranks in `group`; 1 for None."""
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group: dist.ProcessGroup | None) -> int:
    """This process's rank within `group`; 0 for None."""
    return 0 if group is None else dist.get_rank(group)


def padded_length(length: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= `length`."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return -(-length // multiple) * multiple


def pad_to_multiple(x: torch.Tensor, multiple: int, dim: int = 1) -> torch.Tensor:
    """Zero-pad `x` at the end of `dim` to a multiple of `multiple` (no copy if already one)."""
    dim = dim % x.ndim
    extra = padded_length(x.shape[dim], multiple) - x.shape[dim]
    if extra == 0:
        return x
    # F.pad lists (left, right) pairs from the last dim backwards.
    return F.pad(x, [0, 0] * (x.ndim - 1 - dim) + [0, extra])


def all_to_all(
    x: torch.Tensor, group: dist.ProcessGroup | None, scatter_dim: int, gather_dim: int
) -> torch.Tensor:
    """Cut `x` into P equal chunks along `scatter_dim`, send chunk i to rank i, and concatenate
    the chunks received from ranks 0..P-1 along `gather_dim`.

    The shape changes by x.shape[scatter_dim] / P and x.shape[gather_dim] * P.
    """
    return all_to_all_many([x], group, scatter_dim, gather_dim)[0]


def all_to_all_many(
    tensors: list[torch.Tensor] | tuple[torch.Tensor, ...],
    group: dist.ProcessGroup | None,
    scatter_dim: int,
    gather_dim: int,
) -> list[torch.Tensor]:
    """`all_to_all` of several tensors of one shape in a single collective (e.g. q, k, v).

    Packing writes straight into the send layout and unpacking is one copy, so the inputs are
    read once and the outputs written once; each output is contiguous.
    """
    world = group_size(group)
    if world == 1:
        return list(tensors)
    x = tensors[0]
    if any(t.shape != x.shape for t in tensors):
        raise ValueError(f"tensors must share one shape, got {[tuple(t.shape) for t in tensors]}")
    scatter_dim, gather_dim = scatter_dim % x.ndim, gather_dim % x.ndim
    if scatter_dim == gather_dim:
        raise ValueError(f"scatter_dim and gather_dim must differ, both are {scatter_dim}")
    if x.shape[scatter_dim] % world:
        raise ValueError(
            f"dim {scatter_dim} of size {x.shape[scatter_dim]} cannot be scattered over "
            f"{world} ranks: it must be a multiple of {world}"
        )
    # all_to_all_single exchanges equal slices of dim 0: the destination rank goes there, then
    # the tensor index: send is [P, N, *chunk shape], contiguous by construction of stack.
    send = torch.stack(
        [t.unflatten(scatter_dim, (world, -1)).movedim(scatter_dim, 0) for t in tensors], dim=1
    )
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[i] came from rank i; put that axis just before gather_dim so rank order = position.
    merged = recv.movedim(0, gather_dim + 1).flatten(gather_dim + 1, gather_dim + 2)
    return list(merged.contiguous().unbind(0))


def scatter_heads_gather_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`[..., S_local, H, D]` -> `[..., P*S_local, H/P, D]`: full sequence, a slice of the heads."""
    return all_to_all(x, group, scatter_dim=-2, gather_dim=-3)


def gather_heads_scatter_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`[..., P*S_local, H/P, D]` -> `[..., S_local, H, D]`: the inverse of the above."""
    return all_to_all(x, group, scatter_dim=-3, gather_dim=-2)


def split_sequence(
    x: torch.Tensor, group: dist.ProcessGroup | None, seq_dim: int = 1
) -> torch.Tensor:
    """This rank's shard of a full sequence: pad `seq_dim` at the end to a multiple of the group
    size, then take the rank-th of P equal chunks. `[B, S, ...]` -> `[B, ceil(S/P), ...]`.
    No communication: every rank is expected to hold the same full tensor."""
    world = group_size(group)
    if world == 1:
        return x
    padded = pad_to_multiple(x, world, seq_dim)
    return padded.chunk(world, dim=seq_dim)[group_rank(group)]


def gather_sequence(
    x: torch.Tensor,
    group: dist.ProcessGroup | None,
    seq_dim: int = 1,
    length: int | None = None,
) -> torch.Tensor:
    """Concatenate every rank's shard along `seq_dim` in rank order and keep the first `length`
    positions (None: keep the padding). `[B, S_local, ...]` -> `[B, length or P*S_local, ...]`."""
    world = group_size(group)
    seq_dim = seq_dim % x.ndim
    total = world * x.shape[seq_dim]
    if length is not None and not 0 <= length <= total:
        raise ValueError(f"length must be in [0, {total}] (ranks x local length), got {length}")
    if world > 1:
        x = x.contiguous()
        shards = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(shards, x, group=group)
        x = torch.cat(shards, dim=seq_dim)
    return x if length is None else x.narrow(seq_dim, 0, length)


# --- argument checks shared by the attention primitives -------------------------------------

# local_attn(q, k, v, kv_len) -> (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] fp32): exact
# attention on one rank; keys at positions >= kv_len (a python int, None = all) are padding.
LocalAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Optional[int]], tuple[torch.Tensor, torch.Tensor]
]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q `[B, Sq, H, D]`, k and v `[B, Sk, H, D]` with matching B, H, D and one device/dtype."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"{name} must be 4-D [B, S, H, D], got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and head_dim"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype or q.device != k.device or q.device != v.device:
        raise ValueError("q, k and v must share one dtype and one device")


def check_heads_divisible(num_heads: int, degree: int) -> None:
    if num_heads % degree:
        raise ValueError(
            f"ulysses degree {degree} does not divide the {num_heads} heads of q/k/v; "
            f"use a degree that divides {num_heads} and ring parallelism for the rest"
        )


def normalize_kv_len(kv_len: int | None, total: int) -> int | None:
    """Validate a global key count against the padded global length; None if nothing is padding."""
    if kv_len is None:
        return None
    if not isinstance(kv_len, int) or isinstance(kv_len, bool) or not 1 <= kv_len <= total:
        raise ValueError(
            f"kv_len must be an int in [1, {total}] (the padded global key length), got {kv_len!r}"
        )
    return None if kv_len == total else kv_len
