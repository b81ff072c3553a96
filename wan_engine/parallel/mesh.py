"""The (cfg, ring, ulysses) process grid and its sub-groups.

Rank r of the parent group sits at coordinates
    cfg = r // (ring * ulysses),  ring = (r // ulysses) % ring,  ulysses = r % ulysses,
so Ulysses is fastest-varying: its all-to-all, the heaviest collective, stays between neighbouring
ranks (the same node, NVLink). The sequence-parallel rank is `ring * ulysses_size + ulysses`, so
sequence shard i lives on sp rank i and a Ulysses gather yields one contiguous ring block.

Sub-groups exist only for dimensions of size > 1; a size-1 dimension needs no communication and is
represented by `None`, which every primitive in this package reads as "single rank, no collective".
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import torch.distributed as dist

from .config import ParallelConfig

MESH_DIMS = ("cfg", "ring", "ulysses", "sp")


class MeshCoord(NamedTuple):
    cfg: int
    ring: int
    ulysses: int


def mesh_coordinates(rank: int, config: ParallelConfig) -> MeshCoord:
    """Grid coordinates of `rank` (0 <= rank < config.world_size)."""
    if not 0 <= rank < config.world_size:
        raise ValueError(f"rank must be in [0, {config.world_size}), got {rank}")
    return MeshCoord(
        cfg=rank // config.sp_degree,
        ring=(rank // config.ulysses) % config.ring,
        ulysses=rank % config.ulysses,
    )


def group_rank_lists(config: ParallelConfig, dim: str) -> list[list[int]]:
    """Every group of dimension `dim` as lists of parent-group ranks, each list in group-rank order.

    "sp" is the sequence-parallel group (ring and ulysses together, one per cfg branch).
    """
    if dim not in MESH_DIMS:
        raise ValueError(f"dim must be one of {MESH_DIMS}, got {dim!r}")
    ranks = range(config.world_size)
    if dim == "sp":
        key = lambda r: mesh_coordinates(r, config).cfg  # noqa: E731
    else:
        # Members of one group share every coordinate except `dim`.
        key = lambda r: tuple(  # noqa: E731
            v for name, v in mesh_coordinates(r, config)._asdict().items() if name != dim
        )
    groups: dict[object, list[int]] = {}
    for r in ranks:
        groups.setdefault(key(r), []).append(r)
    return list(groups.values())


@dataclass(frozen=True)
class ParallelMesh:
    """One process's view of the grid: its coordinates and the sub-groups it belongs to.

    `*_group` is a torch ProcessGroup, or None when that dimension has size 1.
    """

    config: ParallelConfig
    rank: int
    coord: MeshCoord
    cfg_group: dist.ProcessGroup | None = None
    ring_group: dist.ProcessGroup | None = None
    ulysses_group: dist.ProcessGroup | None = None
    sp_group: dist.ProcessGroup | None = None

    @classmethod
    def single(cls) -> "ParallelMesh":
        """The trivial mesh of a single process; needs no torch.distributed."""
        return cls(config=ParallelConfig(), rank=0, coord=MeshCoord(0, 0, 0))

    @classmethod
    def build(
        cls,
        config: ParallelConfig,
        group: dist.ProcessGroup | None = None,
        timeout: timedelta | None = None,
    ) -> "ParallelMesh | None":
        """Lay `config` over `group` (default: the whole world) and create the sub-groups.

        Collective over the default group: every process calls it, with the same arguments and
        in the same order as its other group creations (torch.distributed.new_group's rule); a
        process outside `group` takes part and gets None back. `timeout` bounds every
        collective on the sub-groups; None takes torch's default (30 min on gloo, 10 min on
        NCCL), so pass the timeout given to init_process_group to keep failures bounded.
        """
        if config.world_size == 1 and not dist.is_initialized():
            return cls.single()
        if not dist.is_initialized():
            raise RuntimeError(
                f"parallel layout {config.describe()} needs {config.world_size} processes but "
                f"torch.distributed is not initialized; call init_process_group first"
            )
        parent_ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
        if len(parent_ranks) != config.world_size:
            raise ValueError(
                f"parallel layout {config.describe()} needs world_size={config.world_size} "
                f"processes, but the process group has world_size={len(parent_ranks)}"
            )
        my_global_rank = dist.get_rank()
        made: dict[str, dist.ProcessGroup | None] = {}
        by_members: dict[tuple[int, ...], dist.ProcessGroup] = {}
        for dim in MESH_DIMS:
            made[dim] = None
            for members in group_rank_lists(config, dim):
                if len(members) == 1:
                    continue
                global_members = tuple(parent_ranks[r] for r in members)
                # ring == 1 makes the sp groups equal the ulysses groups (ulysses == 1: the ring
                # groups); share one communicator instead of creating a duplicate.
                if global_members not in by_members:
                    by_members[global_members] = dist.new_group(list(global_members), timeout=timeout)
                if my_global_rank in global_members:
                    made[dim] = by_members[global_members]
        if my_global_rank not in parent_ranks:
            return None
        rank = parent_ranks.index(my_global_rank)
        return cls(
            config=config,
            rank=rank,
            coord=mesh_coordinates(rank, config),
            cfg_group=made["cfg"],
            ring_group=made["ring"],
            ulysses_group=made["ulysses"],
            sp_group=made["sp"],
        )

    @property
    def cfg_rank(self) -> int:
        return self.coord.cfg

    @property
    def ring_rank(self) -> int:
        return self.coord.ring

    @property
    def ulysses_rank(self) -> int:
        return self.coord.ulysses

    @property
    def sp_rank(self) -> int:
        """Index of the sequence shard this rank holds (0 <= sp_rank < sp_size)."""
        return self.coord.ring * self.config.ulysses + self.coord.ulysses

    @property
    def cfg_size(self) -> int:
        return self.config.cfg

    @property
    def ring_size(self) -> int:
        return self.config.ring

    @property
    def ulysses_size(self) -> int:
        return self.config.ulysses

    @property
    def sp_size(self) -> int:
        return self.config.sp_degree
