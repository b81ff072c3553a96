"""bench/parallel.py: communication volume against hand counts, collective timing on gloo ranks.

The hand counts below are written out from the definitions (tokens from the official latent rule,
bytes of the tensors each collective moves), not computed with the module's formulas.
"""
import pytest
import torch

from wan_engine.bench.parallel import comm_volume, main, time_collectives
from wan_engine.configs import get_preset
from wan_engine.parallel import ParallelConfig

DIT_1_3B = get_preset("t2v-1.3B").dit
DIT_14B = get_preset("t2v-14B").dit


def test_ulysses4_1_3b_480p_matches_hand_count():
    v = comm_volume(DIT_1_3B, 832, 480, 81, ParallelConfig(ulysses=4))
    # 21 x 30 x 52 = 32,760 tokens, 8,190 per rank; q, k, v and out: 3/4 of [8190, 1536] bf16 each.
    assert (v["tokens"], v["seq_len"], v["tokens_per_rank"]) == (32760, 32760, 8190)
    assert v["ulysses_bytes_per_layer"] == 4 * 8190 * 1536 * 3 // 4 * 2 == 75_479_040
    assert v["ring_bytes_per_layer"] == 0
    assert v["attention_bytes_per_forward"] == 30 * 75_479_040 == 2_264_371_200
    # Gather of the fp32 head output (16 channels x 1x2x2 patch) from the 3 other ranks.
    assert v["sequence_gather_bytes"] == 3 * 8190 * 64 * 4 == 6_289_920
    assert v["bytes_per_forward"] == 2_270_661_120
    assert v["forwards_per_step"] == 2 and v["cfg_combine_bytes"] == 0
    assert v["bytes_per_step"] == 4_541_322_240


def test_ring4_passes_k_and_v_three_hops():
    v = comm_volume(DIT_1_3B, 832, 480, 81, ParallelConfig(ring=4))
    assert v["ulysses_bytes_per_layer"] == 0
    assert v["ring_bytes_per_layer"] == 2 * 3 * 8190 * 1536 * 2 == 150_958_080
    # Ring sends twice Ulysses' bytes at degree 4: 2*(P-1) vs 4*(P-1)/P shards.
    assert v["ring_bytes_per_layer"] == 2 * comm_volume(
        DIT_1_3B, 832, 480, 81, ParallelConfig(ulysses=4))["ulysses_bytes_per_layer"]


def test_usp_with_cfg_parallel_14b_720p():
    v = comm_volume(DIT_14B, 1280, 720, 81, ParallelConfig(ulysses=2, ring=2, cfg=2))
    # 21 x 45 x 80 = 75,600 tokens over sp 4: 18,900 per rank.
    assert (v["tokens"], v["tokens_per_rank"]) == (75600, 18900)
    # Ulysses 2: 4 tensors, half of [18900, 5120] each; ring 2: K and V blocks of [37800, 2560], one hop.
    assert v["ulysses_bytes_per_layer"] == 4 * 18900 * 2560 * 2 == 387_072_000
    assert v["ring_bytes_per_layer"] == 2 * 37800 * 2560 * 2 == 387_072_000
    assert v["sequence_gather_bytes"] == 3 * 18900 * 64 * 4
    # One forward per rank per step, plus the fp32 velocity [16, 21, 90, 160] to the other branch.
    assert v["forwards_per_step"] == 1
    assert v["cfg_combine_bytes"] == 16 * 21 * 90 * 160 * 4 == 19_353_600
    assert v["bytes_per_step"] == 40 * 2 * 387_072_000 + 3 * 18900 * 64 * 4 + 19_353_600


def test_padded_sequence_and_fp32_activations():
    # 848 px wide: 21 x 30 x 53 = 33,390 tokens, padded to 33,392 for 4 ranks (8,348 each).
    v = comm_volume(DIT_1_3B, 848, 480, 81, ParallelConfig(ulysses=4), dtype_bytes=4)
    assert (v["tokens"], v["seq_len"], v["tokens_per_rank"]) == (33390, 33392, 8348)
    assert v["ulysses_bytes_per_layer"] == 4 * 8348 * 1536 * 3 // 4 * 4


def test_single_rank_sends_nothing():
    v = comm_volume(DIT_1_3B, 832, 480, 81, ParallelConfig())
    assert v["bytes_per_step"] == 0 and v["forwards_per_step"] == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(parallel=ParallelConfig(ulysses=8)), "ulysses=8 does not divide num_heads=12"),
    (dict(dtype_bytes=3), "dtype_bytes must be 1, 2 or 4"),
    (dict(frames=80), "frames must be 4n\\+1"),
    (dict(width=840), "multiples of 16/16"),
])
def test_bad_inputs_are_refused(kwargs, message):
    args = dict(cfg=DIT_1_3B, width=832, height=480, frames=81, parallel=ParallelConfig(ulysses=2))
    with pytest.raises(ValueError, match=message):
        comm_volume(**{**args, **kwargs})


def test_time_collectives_on_gloo_ranks():
    rows = time_collectives(2, [4096, 1000], repeats=3, warmup=1)
    assert [(r["case"], r["shape"]) for r in rows] == [
        ("all-to-all", "4096 B per rank"), ("ring pass", "4096 B per rank"),
        ("all-to-all", "1000 B per rank"), ("ring pass", "1000 B per rank"),
    ]
    for row in rows:
        assert row["verified"], row  # every rank received the chunks addressed to it
        assert row["impl"] == "gloo-2" and row["repeats"] == 3 and row["device"] == "cpu"
        assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"] < 10_000
        assert row["gbps"] == pytest.approx(row["bytes"] / row["median_ms"] / 1e6)
    assert rows[0]["bytes"] == 2048 and rows[1]["bytes"] == 4096  # all-to-all keeps half
    print("\n".join(f"{r['case']} {r['shape']}: {r['median_ms']:.3f} ms" for r in rows))


@pytest.mark.parametrize("args,message", [
    ((1, [1024]), "world must be an int >= 2"),
    ((2, []), "sizes must be a non-empty list"),
    ((2, [1024], "mpi"), "backend must be 'gloo' or 'nccl'"),
])
def test_time_collectives_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        time_collectives(*args)


def test_cli_prints_the_volume_table(capsys):
    assert main(["--preset", "t2v-1.3B", "--ulysses", "4"]) == 0
    out = capsys.readouterr().out
    assert "cfg=1 x ring=1 x ulysses=4" in out and "4,541,322,240" in out


@pytest.mark.parametrize("preset, dtype", [("tiny", torch.float32), ("tiny", torch.bfloat16), ("tiny-i2v", torch.bfloat16)])
def test_layer_weight_bytes_are_the_executors_stores(preset, dtype):
    from wan_engine.bench.parallel import layer_weight_bytes
    from wan_engine.configs import get_preset
    from wan_engine.engine_config import EngineConfig
    from wan_engine.executor import build_executor
    from wan_engine.loading.random_init import random_state_dict
    from wan_engine.reference.dit import WanDiT

    cfg = get_preset(preset).dit
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state_dict(dit, 0))
    ex = build_executor(dit, EngineConfig(dtype=dtype))
    stored = [sum(t.numel() * t.element_size() for t in store.buffers()) for store in (ex.blocks[0], ex.contexts[0])]
    got = layer_weight_bytes(cfg, torch.empty((), dtype=dtype).element_size())
    assert stored == [got["block"], got["text_kv"]]


def test_shard_weights_volume_and_memory_14b():
    from wan_engine.bench.parallel import layer_weight_bytes, weights_per_rank

    layer = layer_weight_bytes(DIT_14B, 2)
    whole = weights_per_rank(DIT_14B, 1, 2)
    assert whole == 40 * (layer["block"] + layer["text_kv"]) and 28e9 < whole < 32e9  # ~14B bf16 parameters
    held = weights_per_rank(DIT_14B, 8, 2, shard_weights=True)
    assert held == -(-whole // 8) + 2 * (layer["block"] + layer["text_kv"])
    assert abs(held / whole - (1 / 8 + 2 / 40)) < 1e-6  # 1/8 of 40 layers + two buffers: 4.9 of 28.1 GB
    one = weights_per_rank(DIT_14B, 8, 2, shard_weights=True, buffers=1)
    assert held - one == layer["block"] + layer["text_kv"]
    plain = comm_volume(DIT_14B, 1280, 720, 81, ParallelConfig(ulysses=8))
    split = comm_volume(DIT_14B, 1280, 720, 81, ParallelConfig(ulysses=8), shard_weights=True)
    # Each rank sends its 1/8 of every block to the 7 others, once per forward (2 forwards per step).
    assert split["weight_gather_bytes"] == 40 * 7 * -(-layer["block"] // 8)
    assert split["bytes_per_step"] - plain["bytes_per_step"] == 2 * split["weight_gather_bytes"]
    with pytest.raises(ValueError, match="sequence-parallel degree"):
        comm_volume(DIT_14B, 1280, 720, 81, ParallelConfig(cfg=2), shard_weights=True)
    with pytest.raises(ValueError, match="sequence-parallel degree"):
        weights_per_rank(DIT_14B, 1, 2, shard_weights=True)
