"""Ulysses, ring and USP attention on 2 and 4 spawned gloo ranks against a float64 oracle.

One process group per world size runs every case (sp_workers.ATTENTION_CASES); each test below
asserts on one case's numbers. fp32 attention over <= 24 keys with an fp32 softmax and fp32
log-sum-exp merging is accurate to ~1e-7 relative; 1e-5 leaves margin for summation order while
a single leaked padding key (inputs x50) or a misplaced shard is off by O(1).
"""
import pytest

from sp_harness import run_ranks_ok
from sp_workers import ATTENTION_CASES, distributed_suite

REL_TOL = 1e-5


@pytest.fixture(scope="module")
def launches():
    """{world_size: [per-rank results of distributed_suite]}: one launch per world size."""
    return {world: run_ranks_ok(world, distributed_suite) for world in ATTENTION_CASES}


CASES = [(world, case) for world, cases in ATTENTION_CASES.items() for case in cases]


@pytest.mark.parametrize("world,case", CASES, ids=[c.name for _, c in CASES])
def test_sequence_parallel_attention_matches_oracle(launches, world, case):
    per_rank = [r["attention"][case.name] for r in launches[world]]
    for rank, m in enumerate(per_rank):
        where = f"{case.name} rank {rank}: {m}"
        assert m["shapes_ok"] and m["dtype_ok"], where
        assert m["finite"], where
        assert m["out_rel_l2"] < REL_TOL, where
        assert m["lse_rel_l2"] < REL_TOL, where
        assert m["gathered_rel_l2"] < REL_TOL, where
        assert m["without_lse_identical"], where
    print(case.name, "max out rel L2", max(m["out_rel_l2"] for m in per_rank),
          "max lse rel L2", max(m["lse_rel_l2"] for m in per_rank))


@pytest.fixture(scope="module")
def world4_results(launches):
    """(comm, mesh) results of each of the 4 ranks."""
    return [(r["comm"], r["mesh"]) for r in launches[4]]


def test_all_to_all_and_sequence_helpers_are_exact(world4_results):
    for rank, (comm, _) in enumerate(world4_results):
        assert comm["to_heads_exact"] and comm["stacked_exact"] and comm["round_trip_exact"], rank
        assert comm["many_exact"] and comm["split_gather_exact"], rank
        assert comm["split_len"] == 3  # 9 tokens padded to 12 over 4 ranks


def test_mesh_groups_contain_the_expected_ranks(world4_results):
    for rank, (_, mesh) in enumerate(world4_results):
        for name, got in mesh.items():
            if name == "subgroup":
                continue
            assert got["coord"] == got["expected_coord"], (rank, name)
            assert got["members"] == got["expected"], (rank, name, got)
            # sp shard index: position inside the sp group, ulysses fastest.
            sp_members = got["members"]["sp"] or [rank]
            assert got["sp_rank"] == sp_members.index(rank), (rank, name)


def test_mesh_layout_puts_ulysses_on_neighbouring_ranks(world4_results):
    _, mesh0 = world4_results[0]
    assert mesh0["ParallelConfig(ulysses=2, ring=2, cfg=1)"]["members"]["ulysses"] == [0, 1]
    assert mesh0["ParallelConfig(ulysses=2, ring=2, cfg=1)"]["members"]["ring"] == [0, 2]
    assert mesh0["ParallelConfig(ulysses=2, ring=1, cfg=2)"]["members"]["cfg"] == [0, 2]


def test_mesh_over_a_subgroup(world4_results):
    subs = [mesh["subgroup"] for _, mesh in world4_results]
    assert subs[0] is None and subs[2] is None
    assert subs[1] == {"rank": 0, "ulysses_members": [1, 3], "sp_is_ulysses": True}
    assert subs[3] == {"rank": 1, "ulysses_members": [1, 3], "sp_is_ulysses": True}
