"""`apply_parallel(executor, mesh)`: make a built executor compute its share of a parallel forward.

gpt-fast style: the model is built as for one process, then this function installs, as data,

- a sequence-parallel self-attention (`SequenceParallelAttention`: Ulysses, ring or both, around
  the executor's own resolved attention backend), and
- a `ShardPlan` (split the tokens after patch embedding, gather them before unpatchify).

No method is replaced: the executor's forward already takes its self-attention op and its shard
plan from these two fields. Cross-attention keeps the local backend with the full text K/V. CFG
parallelism is not the executor's business: the runner gets the mesh and combines the branches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from wan_engine.executor import WanExecutor

from .mesh import ParallelMesh
from .shard_plan import ShardPlan
from .usp import sequence_parallel_attention


@dataclass(frozen=True)
class SequenceParallelAttention:
    """Self-attention over a sequence sharded on `mesh`'s sp group, called like an attention
    backend: `(q, k, v, *, kv_len=None, return_lse=False)`.

    q `[B, S_local, H, D]`, k/v `[B, S_local, H, D]`: this rank's slices of a global sequence
    padded to sp_size * S_local; `kv_len` is the global number of real keys (the rest is padding
    and is never attended). Returns out `[B, S_local, H, D]` (and lse `[B, H, S_local]` fp32).
    `local` is the single-process backend that runs the exact attention on each rank.
    """

    mesh: ParallelMesh
    local: object  # an attention backend: local(q, k, v, *, kv_len=None, return_lse=False)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kv_len: int | None = None,
                 return_lse: bool = False):
        # Ring merging needs each block's log-sum-exp; plain Ulysses does not, and asking for it
        # would force a (possibly slower) lse-returning kernel.
        if return_lse or self.mesh.ring_size > 1:
            def local_attn(q_, k_, v_, n):
                return self.local(q_, k_, v_, kv_len=n, return_lse=True)
        else:
            def local_attn(q_, k_, v_, n):
                return self.local(q_, k_, v_, kv_len=n), None
        return sequence_parallel_attention(q, k, v, self.mesh, local_attn, kv_len, return_lse=return_lse)


def apply_parallel(executor, mesh: ParallelMesh):
    """Install `mesh`'s sequence parallelism on `executor` (in place) and return it.

    Collective-free. Every rank of an sp group must then call the executor's forward with the
    same inputs (same latents, timestep and text): each computes its slice of the tokens and all
    return the full velocity. A mesh of sp degree 1 (one process, or CFG parallelism only) leaves
    the executor's single-process path untouched: no sharding, no collective.
    Raises ValueError, before changing anything, if Ulysses does not divide the model's heads.
    """
    if not isinstance(executor, WanExecutor):
        raise ValueError(f"executor must be a WanExecutor (sequence parallelism needs engine='executor'), "
                         f"got {type(executor).__name__}")
    if not isinstance(mesh, ParallelMesh):
        raise ValueError(f"mesh must be a ParallelMesh, got {type(mesh).__name__}")
    mesh.config.validate(executor.config.num_heads, mesh.config.world_size)
    if mesh.sp_size == 1:
        executor.parallelize(executor.ops.attention, None)
    else:
        executor.parallelize(SequenceParallelAttention(mesh, executor.ops.attention), ShardPlan.from_mesh(mesh))
    return executor
