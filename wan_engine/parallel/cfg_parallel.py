"""CFG parallelism: the conditional and unconditional DiT passes run on different rank groups.

With `cfg=2` the mesh's cfg coordinate says which branch a rank computes (0: conditional, 1:
unconditional); the two velocities meet once per step in `cfg_combine`, an all-gather over the
cfg group (two ranks holding the same sequence shard, or the same full tensor), after which every
rank holds the identical guided velocity and steps its solver in lockstep with the others.
The official Wan2.1 code has no CFG parallelism; the combine reproduces its single-process
`u + g * (c - u)` bit for bit.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .mesh import ParallelMesh

COND_BRANCH = 0
UNCOND_BRANCH = 1


def _require_cfg_parallel(mesh: ParallelMesh, what: str) -> None:
    if mesh.cfg_size != 2:
        raise ValueError(f"{what} needs a mesh with cfg=2, got {mesh.config.describe()}; "
                         f"with cfg=1 every rank computes both branches and combines them locally")


def cfg_branch(mesh: ParallelMesh) -> int:
    """The branch this rank computes: COND_BRANCH (0) or UNCOND_BRANCH (1). Needs cfg=2."""
    _require_cfg_parallel(mesh, "cfg_branch")
    return mesh.cfg_rank


def branch_context(mesh: ParallelMesh, context: torch.Tensor, context_null: torch.Tensor) -> torch.Tensor:
    """The text context this rank's branch is conditioned on: `context` or `context_null`."""
    return context if cfg_branch(mesh) == COND_BRANCH else context_null


def cfg_combine(v_local: torch.Tensor, mesh: ParallelMesh, guidance: float) -> torch.Tensor:
    """Guided velocity `u + guidance * (c - u)` from this rank's branch velocity.

    v_local: this rank's branch output, any shape (a sequence shard or the full latent
    `[B, C, F, H, W]`), the same shape on both ranks of the cfg group. Returns fp32 of that shape,
    identical on both ranks, computed as the single-process runner does: both branches cast to
    fp32, then `v_uncond + guidance * (v_cond - v_uncond)` with `guidance` a Python float.
    """
    _require_cfg_parallel(mesh, "cfg_combine")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite real number, got {guidance!r}")
    mine = v_local.float().contiguous()
    both = [torch.empty_like(mine) for _ in range(2)]
    dist.all_gather(both, mine, group=mesh.cfg_group)  # index = cfg rank = branch
    v_cond, v_uncond = both[COND_BRANCH], both[UNCOND_BRANCH]
    return v_uncond + float(guidance) * (v_cond - v_uncond)
