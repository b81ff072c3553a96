"""Code that runs inside the spawned ranks (module-level so spawn can pickle it by name).

Each suite runs many cases in one process group, because starting ranks costs seconds on a
shared CPU; it returns plain numbers (errors, member lists) and the tests assert on them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from sp_harness import attention_oracle, local_math_attention, random_qkv, rel_l2
from wan_engine.parallel import (
    ParallelConfig,
    ParallelMesh,
    all_to_all_many,
    gather_heads_scatter_sequence,
    gather_sequence,
    group_rank_lists,
    mesh_coordinates,
    padded_length,
    ring_attention,
    scatter_heads_gather_sequence,
    sequence_parallel_attention,
    split_sequence,
    ulysses_attention,
)

SUBGROUP_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class AttentionCase:
    """One sequence-parallel attention check: `strategy` over the layout `config`.

    seq_len is the number of real tokens; the global sequence is padded to a multiple of the sp
    degree and kv_len = seq_len is passed unless `pass_kv_len` is False (then it must need no
    padding).
    """

    name: str
    strategy: str  # "ulysses" | "ring" | "usp"
    config: ParallelConfig
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    pass_kv_len: bool = True


ATTENTION_CASES = {
    2: [
        AttentionCase("ulysses2_even_no_kv_len", "ulysses", ParallelConfig(ulysses=2), 2, 16, 4, 8, False),
        AttentionCase("ulysses2_pad_S13", "ulysses", ParallelConfig(ulysses=2), 2, 13, 2, 8),
        AttentionCase("ring2_even_H3", "ring", ParallelConfig(ring=2), 2, 12, 3, 8, False),
        AttentionCase("ring2_pad_S11_H3", "ring", ParallelConfig(ring=2), 1, 11, 3, 16),
        AttentionCase("usp_ring2_only_pad_S7", "usp", ParallelConfig(ring=2), 2, 7, 3, 8),
    ],
    4: [
        AttentionCase("ulysses4_pad_S21", "ulysses", ParallelConfig(ulysses=4), 2, 21, 4, 8),
        AttentionCase("ulysses4_H8_pad_S10", "ulysses", ParallelConfig(ulysses=4), 1, 10, 8, 4),
        # 9 tokens over 4 ranks: blocks of 3 hold 3, 3, 3 and 0 real keys.
        AttentionCase("ring4_pad_S9_H3_empty_block", "ring", ParallelConfig(ring=4), 2, 9, 3, 8),
        AttentionCase("ring4_pad_S13_H6", "ring", ParallelConfig(ring=4), 1, 13, 6, 12),
        AttentionCase("usp2x2_pad_S10", "usp", ParallelConfig(ulysses=2, ring=2), 2, 10, 4, 8),
        AttentionCase("usp2x2_even_no_kv_len", "usp", ParallelConfig(ulysses=2, ring=2), 1, 16, 2, 8, False),
        # 2 tokens over 4 shards of 1: the second ring block (2 tokens) is all padding.
        AttentionCase("usp2x2_S2_empty_block", "usp", ParallelConfig(ulysses=2, ring=2), 1, 2, 6, 8),
        AttentionCase("usp_cfg2_ulysses2_pad_S7", "usp", ParallelConfig(ulysses=2, cfg=2), 2, 7, 2, 8),
        AttentionCase("usp_cfg2_ring2_pad_S5_H3", "usp", ParallelConfig(ring=2, cfg=2), 1, 5, 3, 8),
    ],
}


def _run_case(case: AttentionCase, mesh: ParallelMesh) -> dict:
    sp = case.config.sp_degree
    seq_padded = padded_length(case.seq_len, sp)
    if not case.pass_kv_len and seq_padded != case.seq_len:
        raise ValueError(f"case {case.name}: without kv_len the sequence must need no padding")
    # Each CFG branch attends over its own data, so mixing branches would show up as an error.
    seed = 1000 * case.seq_len + 10 * case.heads + mesh.cfg_rank
    q, k, v = random_qkv(case.batch, seq_padded, case.heads, case.head_dim, case.seq_len, seed)
    kv_len = case.seq_len if case.pass_kv_len else None

    shard = {"ulysses": mesh.ulysses_group, "ring": mesh.ring_group, "usp": mesh.sp_group}
    group = shard[case.strategy]
    q_loc, k_loc, v_loc = (split_sequence(t, group) for t in (q, k, v))
    if case.strategy == "ulysses":
        call = lambda **kw: ulysses_attention(  # noqa: E731
            q_loc, k_loc, v_loc, mesh.ulysses_group, local_math_attention, kv_len, **kw
        )
    elif case.strategy == "ring":
        call = lambda **kw: ring_attention(  # noqa: E731
            q_loc, k_loc, v_loc, mesh.ring_group, local_math_attention, kv_len, **kw
        )
    else:
        call = lambda **kw: sequence_parallel_attention(  # noqa: E731
            q_loc, k_loc, v_loc, mesh, local_math_attention, kv_len, **kw
        )
    out, lse = call(return_lse=True)
    out_only = call()

    ref_out, ref_lse = attention_oracle(q, k, v, case.seq_len)
    ref_out_loc = split_sequence(ref_out, group)
    ref_lse_loc = split_sequence(ref_lse, group, seq_dim=2)
    full_out = gather_sequence(out, group, length=case.seq_len)
    return {
        "out_rel_l2": rel_l2(out, ref_out_loc),
        "lse_rel_l2": rel_l2(lse, ref_lse_loc),
        "gathered_rel_l2": rel_l2(full_out, ref_out[:, : case.seq_len]),
        "shapes_ok": out.shape == q_loc.shape and lse.shape == ref_lse_loc.shape,
        "dtype_ok": out.dtype == q.dtype and lse.dtype == torch.float32,
        "finite": bool(torch.isfinite(out).all() and torch.isfinite(lse).all()),
        "without_lse_identical": bool(torch.equal(out_only, out)),
    }


def attention_suite(rank: int, world_size: int) -> dict:
    """Every case of ATTENTION_CASES[world_size] on this rank: {case name: error metrics}."""
    meshes: dict[ParallelConfig, ParallelMesh] = {}
    results = {}
    for case in ATTENTION_CASES[world_size]:
        if case.config not in meshes:
            meshes[case.config] = ParallelMesh.build(case.config, timeout=SUBGROUP_TIMEOUT)
        results[case.name] = _run_case(case, meshes[case.config])
    return results


def comm_suite(rank: int, world_size: int) -> dict:
    """Exact checks of the all-to-all and sequence split/gather helpers over the world."""
    world = dist.group.WORLD
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(2, 3 * world_size, 2 * world_size, 5, generator=gen)  # [B, S, H, D]
    local = full.chunk(world_size, dim=1)[rank]
    heads = full.chunk(world_size, dim=2)[rank]
    to_heads = scatter_heads_gather_sequence(local, world)
    # Stacked leading dim: the q/k/v layout used by the primitives.
    stacked = scatter_heads_gather_sequence(torch.stack((local, 2 * local)), world)
    many = all_to_all_many((local, 3 * local), world, scatter_dim=2, gather_dim=1)
    odd = torch.randn(1, 2 * world_size + 1, 3, generator=gen)  # length not divisible
    return {
        "to_heads_exact": bool(torch.equal(to_heads, heads)),
        "stacked_exact": bool(torch.equal(stacked[0], heads) and torch.equal(stacked[1], 2 * heads)),
        "many_exact": bool(
            torch.equal(many[0], heads) and torch.equal(many[1], 3 * heads)
            and all(t.is_contiguous() for t in many)
        ),
        "round_trip_exact": bool(torch.equal(gather_heads_scatter_sequence(to_heads, world), local)),
        "split_gather_exact": bool(
            torch.equal(gather_sequence(split_sequence(odd, world), world, length=odd.shape[1]), odd)
        ),
        "split_len": split_sequence(odd, world).shape[1],
    }


MESH_CONFIGS = [
    ParallelConfig(ulysses=2, ring=2),
    ParallelConfig(ulysses=2, cfg=2),
    ParallelConfig(ring=2, cfg=2),
    ParallelConfig(ulysses=4),
    ParallelConfig(ring=4),
]


def _members(group) -> list[int] | None:
    """Global ranks of `group` in group-rank order, learned by communicating over it."""
    if group is None:
        return None
    size = dist.get_world_size(group)
    gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(gathered, torch.tensor([dist.get_rank()]), group=group)
    return [int(t) for t in gathered]


def mesh_suite(rank: int, world_size: int) -> dict:
    """For each MESH_CONFIGS layout: this rank's coordinates and the members of its groups,
    measured by an all_gather over each group; plus a mesh laid over a sub-group."""
    results = {}
    for config in MESH_CONFIGS:
        mesh = ParallelMesh.build(config, timeout=SUBGROUP_TIMEOUT)
        results[str(config)] = {
            "coord": tuple(mesh.coord),
            "expected_coord": tuple(mesh_coordinates(rank, config)),
            "sp_rank": mesh.sp_rank,
            "members": {dim: _members(getattr(mesh, f"{dim}_group")) for dim in ("cfg", "ring", "ulysses", "sp")},
            "expected": {
                dim: next((m for m in group_rank_lists(config, dim) if rank in m and len(m) > 1), None)
                for dim in ("cfg", "ring", "ulysses", "sp")
            },
        }
    # A mesh over ranks [1, 3] only: ranks 0 and 2 take part in group creation and get None.
    parent = dist.new_group([1, 3], timeout=SUBGROUP_TIMEOUT)
    sub = ParallelMesh.build(ParallelConfig(ulysses=2), group=parent, timeout=SUBGROUP_TIMEOUT)
    results["subgroup"] = None if sub is None else {
        "rank": sub.rank,
        "ulysses_members": _members(sub.ulysses_group),
        "sp_is_ulysses": sub.sp_group is sub.ulysses_group,
    }
    return results


def distributed_suite(rank: int, world_size: int) -> dict:
    """All correctness suites of one world size in one launch (starting ranks is the slow part)."""
    results = {"attention": attention_suite(rank, world_size)}
    if world_size == 4:
        results["comm"] = comm_suite(rank, world_size)
        results["mesh"] = mesh_suite(rank, world_size)
    return results


# --- failure scenarios ----------------------------------------------------------------------------


def failing_rank_suite(rank: int, world_size: int, mode: str, timeout_s: float) -> None:
    """Rank 1 fails ("crash": raises and its process exits; "hang": never joins the collective
    for longer than the timeout); the others run Ulysses attention over a mesh whose groups have
    a `timeout_s` timeout, and must fail with an error that says how long they waited."""
    mesh = ParallelMesh.build(ParallelConfig(ulysses=world_size), timeout=timedelta(seconds=timeout_s))
    if rank == 1:
        if mode == "crash":
            raise RuntimeError("simulated crash of rank 1")
        time.sleep(timeout_s + 3.0)
        return None
    q, k, v = random_qkv(1, 4 * world_size, world_size, 8, 4 * world_size, seed=0)
    start = time.monotonic()
    try:
        ulysses_attention(*(split_sequence(t, mesh.ulysses_group) for t in (q, k, v)),
                          mesh.ulysses_group, local_math_attention)
    except Exception as err:
        raise RuntimeError(f"survivor failed after {time.monotonic() - start:.2f} s") from err
    return None
