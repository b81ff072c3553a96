"""Ring sequence-parallel attention.

Each of R ranks keeps its query block and passes its key/value block around the ring: at step t
rank r holds the K/V block of rank (r - t) mod R. The transfer for step t+1 is posted before the
attention of step t runs, so communication hides behind compute when the block is large enough.
Partial results are merged exactly by their log-sum-exp in fp32. Works for any head count.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import LocalAttention, check_qkv, group_rank, group_size, normalize_kv_len


def valid_keys_in_block(kv_len: int | None, block: int, block_len: int) -> int:
    """How many of the keys of ring block `block` (global positions [block*block_len,
    (block+1)*block_len)) are real when the first `kv_len` global keys are (None: all)."""
    if kv_len is None:
        return block_len
    return min(max(kv_len - block * block_len, 0), block_len)


def merge_partial_attention(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    """Fold one block's partial attention into the running result, in place.

    out `[B, S, H, D]` fp32 and lse `[B, H, S]` fp32 are the running result (both finite);
    block_out `[B, S, H, D]` (any float dtype) and block_lse `[B, H, S]` the block's. Each output
    is a softmax-weighted mean over its own keys, so the union's is their mean weighted by
    exp(lse_i - lse_union).
    """
    new_lse = torch.logaddexp(lse, block_lse.float())
    keep = torch.exp(lse - new_lse).transpose(1, 2).unsqueeze(-1)
    take = torch.exp(block_lse.float() - new_lse).transpose(1, 2).unsqueeze(-1)
    out.mul_(keep).add_(block_out.float() * take)
    lse.copy_(new_lse)


def ring_attention(
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

    q `[B, Sq_local, H, D]`, k/v `[B, Sk_local, H, D]`: the contiguous shards of ring rank r,
    i.e. global positions [r * S_local, (r+1) * S_local) of a sequence padded at its end to
    R * S_local. `kv_len` is the global number of real keys; a block with none is skipped.
    Returns out `[B, Sq_local, H, D]` in q's dtype, and with `return_lse` lse `[B, H, Sq_local]`
    fp32.
    """
    check_qkv(q, k, v)
    world, rank = group_size(group), group_rank(group)
    block_len = k.shape[1]
    kv_len = normalize_kv_len(kv_len, world * block_len)
    if world == 1:
        out, lse = local_attn(q, k, v, kv_len)
        return (out, lse) if return_lse else out

    send_to = dist.get_global_rank(group, (rank + 1) % world)
    recv_from = dist.get_global_rank(group, (rank - 1) % world)
    # k and v travel as one buffer: one send and one receive per step. Two buffers alternate:
    # the one computed on (and being sent) and the one being received into.
    buffers = [torch.stack((k, v)), None]
    out = lse = None
    for step in range(world):
        current = buffers[step % 2]
        pending = []
        if step + 1 < world:
            if buffers[(step + 1) % 2] is None:
                buffers[(step + 1) % 2] = torch.empty_like(current)
            pending = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, current, send_to, group),
                    dist.P2POp(dist.irecv, buffers[(step + 1) % 2], recv_from, group),
                ]
            )
        owner = (rank - step) % world
        valid = valid_keys_in_block(kv_len, owner, block_len)
        if valid > 0:
            block_out, block_lse = local_attn(
                q, current[0], current[1], None if valid == block_len else valid
            )
            if out is None:
                out, lse = block_out.float().clone(), block_lse.float().clone()
            else:
                merge_partial_attention(out, lse, block_out, block_lse)
        for work in pending:
            work.wait()
    # kv_len >= 1 keeps block 0 non-empty, so every rank has merged at least one block.
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
