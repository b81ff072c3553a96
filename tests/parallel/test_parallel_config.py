"""ParallelConfig validation and the mesh layout, checked without starting any process."""
import pytest
import torch.distributed as dist

from wan_engine.parallel import ParallelConfig, ParallelMesh, group_rank_lists, mesh_coordinates
from wan_engine.parallel.config import divisors


def test_world_size_is_the_product_of_degrees():
    cfg = ParallelConfig(ulysses=3, ring=2, cfg=2)
    assert (cfg.world_size, cfg.sp_degree) == (12, 6)
    assert ParallelConfig().world_size == 1


@pytest.mark.parametrize("field", ["ulysses", "ring", "cfg"])
@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_degrees_must_be_positive_ints(field, bad):
    with pytest.raises(ValueError, match=field):
        ParallelConfig(**{field: bad})


def test_cfg_degree_is_at_most_two():
    with pytest.raises(ValueError, match="cfg must be 1 or 2"):
        ParallelConfig(cfg=3)


def test_ulysses_not_dividing_heads_names_valid_degrees_and_a_working_split():
    with pytest.raises(ValueError) as err:
        ParallelConfig(ulysses=8).validate(num_heads=12, world_size=8)
    msg = str(err.value)
    assert "ulysses=8 does not divide num_heads=12" in msg
    assert "valid ulysses degrees: 1, 2, 3, 4, 6, 12" in msg
    assert "--ulysses 4 --ring 2" in msg


@pytest.mark.parametrize(
    "ulysses,ring,heads,hint",
    [(8, 1, 12, "--ulysses 4 --ring 2"), (5, 2, 12, "--ulysses 2 --ring 5"), (16, 1, 40, "--ulysses 8 --ring 2"),
     (3, 1, 40, "--ulysses 1 --ring 3")],
)
def test_suggested_split_keeps_the_sequence_parallel_degree(ulysses, ring, heads, hint):
    with pytest.raises(ValueError, match=hint):
        ParallelConfig(ulysses=ulysses, ring=ring).validate(heads, ulysses * ring)


def test_world_size_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match=r"world_size=4 processes, but world_size=8"):
        ParallelConfig(ulysses=2, ring=2).validate(num_heads=12, world_size=8)


@pytest.mark.parametrize("config", [ParallelConfig(ulysses=4), ParallelConfig(ulysses=2, ring=4, cfg=2),
                                    ParallelConfig(ring=8), ParallelConfig(ulysses=12, cfg=2)])
def test_valid_layouts_pass(config):
    config.validate(num_heads=12, world_size=config.world_size)


def test_divisors():
    assert divisors(40) == [1, 2, 4, 5, 8, 10, 20, 40]
    assert divisors(1) == [1]


def test_coordinates_are_ulysses_fastest_and_cover_the_grid_once():
    config = ParallelConfig(ulysses=3, ring=2, cfg=2)
    coords = [mesh_coordinates(r, config) for r in range(config.world_size)]
    assert coords[:4] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    assert coords[6] == (1, 0, 0)
    assert len(set(coords)) == config.world_size
    with pytest.raises(ValueError, match=r"rank must be in \[0, 12\)"):
        mesh_coordinates(12, config)


def test_group_rank_lists_partition_the_ranks():
    config = ParallelConfig(ulysses=2, ring=3, cfg=2)
    assert group_rank_lists(config, "ulysses")[:2] == [[0, 1], [2, 3]]
    assert group_rank_lists(config, "ring")[:2] == [[0, 2, 4], [1, 3, 5]]
    assert group_rank_lists(config, "cfg")[0] == [0, 6]
    assert group_rank_lists(config, "sp") == [list(range(6)), list(range(6, 12))]
    for dim, size in [("ulysses", 2), ("ring", 3), ("cfg", 2), ("sp", 6)]:
        lists = group_rank_lists(config, dim)
        assert all(len(m) == size for m in lists)
        assert sorted(r for m in lists for r in m) == list(range(12))
    with pytest.raises(ValueError, match="dim must be one of"):
        group_rank_lists(config, "tensor")


def test_single_process_mesh_needs_no_distributed():
    assert not dist.is_initialized()
    mesh = ParallelMesh.build(ParallelConfig())
    assert mesh == ParallelMesh.single()
    assert (mesh.sp_size, mesh.sp_rank, mesh.ulysses_group, mesh.ring_group, mesh.sp_group) == (1, 0, None, None, None)


def test_multi_process_layout_without_distributed_is_refused():
    with pytest.raises(RuntimeError, match="needs 4 processes but torch.distributed is not initialized"):
        ParallelMesh.build(ParallelConfig(ulysses=2, ring=2))
