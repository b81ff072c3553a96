"""Sequence parallelism (Ulysses, ring, USP), CFG parallelism, row-parallel VAE decode, the process
mesh and its launch (init_distributed, rank-0 randomness, failure handling), and block weights split
over a sequence-parallel group (`shard_block_weights`), over torch.distributed.

`apply_parallel(executor, mesh)` installs sequence parallelism on a built executor (shard plan
and sequence-parallel self-attention, as data); the runner takes the mesh for CFG parallelism.

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
from .apply import SequenceParallelAttention, apply_parallel
from .cfg_parallel import COND_BRANCH, UNCOND_BRANCH, branch_context, cfg_branch, cfg_combine
from .config import ParallelConfig
from .halo import exchange_halo, gather_rows, row_ranges
from .mesh import MeshCoord, ParallelMesh, group_rank_lists, mesh_coordinates
from .ring import merge_partial_attention, ring_attention
from .shard_plan import ShardPlan
from .runtime import (
    DEFAULT_TIMEOUT_S,
    PeerFailure,
    broadcast_from_rank0,
    init_distributed,
    peer_failure_guard,
    rank_device,
    shared_noise,
    shared_seed,
    shutdown,
)
from .ulysses import ulysses_attention
from .usp import sequence_parallel_attention, usp_attention
from .vae_decode import parallel_vae_decode
from .vae_encode import parallel_vae_encode
from .weight_shard import ShardedStores, shard_block_weights

__all__ = [
    "COND_BRANCH",
    "DEFAULT_TIMEOUT_S",
    "LocalAttention",
    "MeshCoord",
    "ParallelConfig",
    "ParallelMesh",
    "ShardedStores",
    "PeerFailure",
    "SequenceParallelAttention",
    "ShardPlan",
    "UNCOND_BRANCH",
    "all_to_all",
    "apply_parallel",
    "all_to_all_many",
    "branch_context",
    "broadcast_from_rank0",
    "cfg_branch",
    "cfg_combine",
    "exchange_halo",
    "gather_heads_scatter_sequence",
    "gather_rows",
    "gather_sequence",
    "group_rank_lists",
    "init_distributed",
    "merge_partial_attention",
    "mesh_coordinates",
    "pad_to_multiple",
    "padded_length",
    "parallel_vae_decode",
    "parallel_vae_encode",
    "shard_block_weights",
    "peer_failure_guard",
    "rank_device",
    "ring_attention",
    "row_ranges",
    "scatter_heads_gather_sequence",
    "sequence_parallel_attention",
    "shared_noise",
    "shared_seed",
    "shutdown",
    "split_sequence",
    "ulysses_attention",
    "usp_attention",
]
