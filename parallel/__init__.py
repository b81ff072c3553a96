"""Sequence parallelism (Ulysses, ring, USP) and the process mesh, over torch.distributed.

Installed as `wan_engine.parallel`. Groups and meshes are always passed explicitly; `None` as a
group means a single rank and no communication.
"""
from .comm import (
    LocalAttention,
    all_to_all,
    all_to_all_many,
    gather_heads_scatter_sequence,
    gather_sequence,
    pad_to_multiple,
    padded_length,
    scatter_heads_gather_sequence,
    split_sequence,
)
from .config import ParallelConfig
from .mesh import MeshCoord, ParallelMesh, group_rank_lists, mesh_coordinates
from .ring import merge_partial_attention, ring_attention
from .ulysses import ulysses_attention
from .usp import sequence_parallel_attention, usp_attention

__all__ = [
    "LocalAttention",
    "MeshCoord",
    "ParallelConfig",
    "ParallelMesh",
    "all_to_all",
    "all_to_all_many",
    "gather_heads_scatter_sequence",
    "gather_sequence",
    "group_rank_lists",
    "merge_partial_attention",
    "mesh_coordinates",
    "pad_to_multiple",
    "padded_length",
    "ring_attention",
    "scatter_heads_gather_sequence",
    "sequence_parallel_attention",
    "split_sequence",
    "ulysses_attention",
    "usp_attention",
]
