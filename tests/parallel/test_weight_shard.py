"""Block weights split over the ranks of a sequence-parallel group (`shard_weights`) on spawned gloo
ranks: the same latents as the unsplit run on the same mesh, bit for bit, with a fraction of the
block bytes per rank.

The split changes where the bytes live, not what is computed: each block's tensors are gathered
back byte for byte before it runs, into the same shapes and dtypes, and the kernels are the same.
So every layout is held to equality with the unsplit run on the same mesh (not a tolerance).
Layouts: Ulysses 2 and ring 2 on 2 ranks (one sp group), CFG 2 x Ulysses 2 on 4 ranks (two sp
groups of 2, each splitting its own copy), with fp8-emulated weights and a LoRA merged first, and
with FBCache (blocks skipped on some steps: every rank of a group skips alike).
"""
from __future__ import annotations

import dataclasses
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch

from sp_harness import run_ranks_ok
from wan_engine.cache import CacheConfig
from wan_engine.parallel import ParallelConfig, ParallelMesh
from wan_engine.pipelines.t2v import WanPipeline

REQUESTS = [(seed, prompt) for seed in range(2) for prompt in ("a paper boat on a pond", "a red kite")]


def _latents(pipe: WanPipeline, cache: str | None = None) -> tuple[list[torch.Tensor], list]:
    out, decisions = [], []
    for seed, prompt in REQUESTS:
        req = pipe.make_request(prompt, size=(48, 48), num_frames=9, steps=4, seed=seed,
                                cache=None if cache is None else CacheConfig.parse(cache))
        with torch.inference_mode():
            context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
            step_cache = pipe.make_step_cache(req, None)
            out.append(pipe.denoise(req, context, context_null, False, step_cache))
        decisions.append(None if step_cache is None else list(step_cache.decisions))
    return out, decisions


def _block_bytes(pipe: WanPipeline) -> tuple[int, int, int]:
    """(bytes of the block and text K/V tensors, of this rank's shards, of the gather buffers)."""
    dit = pipe.dit
    if dit.weight_shards is None:
        layers = [store for store in (*dit.blocks, *dit.contexts)]
        return sum(t.numel() * t.element_size() for store in layers for t in store.buffers()), 0, 0
    return 0, sum(s.shard_bytes for s in dit.weight_shards), sum(s.buffer_bytes for s in dit.weight_shards)


def shard_suite(rank: int, world_size: int, layouts: dict, lora_file: str) -> dict:
    results = {}
    for name, (config, options) in layouts.items():
        mesh = ParallelMesh.build(config, timeout=timedelta(seconds=60))
        options = {"loras": [f"{lora_file}:0.7"]} if options == "lora" else (options or {})
        cache = options.pop("cache", None)
        whole = WanPipeline.from_pretrained("tiny", parallel=config, mesh=mesh, **options)
        split = WanPipeline.from_pretrained("tiny", parallel=config, mesh=mesh, shard_weights=True, **options)
        (a, decided), (b, decided_split) = _latents(whole, cache), _latents(split, cache)
        results[name] = {"equal": all(torch.equal(x, y) for x, y in zip(a, b)) and decided == decided_split,
                         "decisions": decided,
                         "bytes": (_block_bytes(whole)[0], *_block_bytes(split)[1:]),
                         "stores_empty": all(t is None for store in split.dit.blocks for t in store.buffers()) and
                         not list(split.dit.blocks[0].buffers())}
        if name == "ulysses2-lora":
            try:
                split.set_loras([])
                results["set_loras"] = "no error"
            except ValueError as err:
                results["set_loras"] = str(err)
            try:
                split.dit.quantize_weights("fp8-emulated")
                results["quantize"] = "no error"
            except ValueError as err:
                results["quantize"] = str(err)
    return results


def _lora(tmp_path) -> str:
    from safetensors.torch import save_file

    from wan_engine.configs import get_preset

    cfg = get_preset("tiny").dit
    gen = torch.Generator().manual_seed(3)
    tensors = {}
    for i in range(cfg.num_layers):
        for target in ("self_attn.q", "ffn.0"):
            out_dim = cfg.ffn_dim if target == "ffn.0" else cfg.dim
            tensors[f"blocks.{i}.{target}.lora_A.weight"] = torch.randn(4, cfg.dim, generator=gen) * 0.1
            tensors[f"blocks.{i}.{target}.lora_B.weight"] = torch.randn(out_dim, 4, generator=gen) * 0.1
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    return str(path)


def stores_suite(rank: int, world_size: int) -> dict:
    """ShardedStores on their own: every take, in order with prefetch, out of order, and after a
    prefetch that is never taken, returns the original tensors, with and without overlap."""
    import torch.distributed as dist

    from wan_engine.configs import get_preset
    from wan_engine.executor import build_executor
    from wan_engine.executor.weights import BlockWeights
    from wan_engine.loading.random_init import random_state_dict
    from wan_engine.parallel import ShardedStores
    from wan_engine.reference.dit import WanDiT

    cfg = dataclasses.replace(get_preset("tiny").dit, num_layers=5)
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state_dict(dit, 1))
    out = {}
    for overlap in (True, False):
        ex = build_executor(dit)
        want = [{k: v.clone() for k, v in store.named_buffers()} for store in ex.blocks]
        shards = ShardedStores(ex.blocks, BlockWeights, dist.group.WORLD, torch.device("cpu"), overlap)
        order = [(0, 1), (1, 2), (2, 3), (3, 4), (4, None), (2, 0), (4, None), (0, 3), (1, None), (3, None)]
        ok = True
        for i, then in order:
            got = shards.take(i, then)._asdict()
            ok &= all(torch.equal(got[k], v) for k, v in want[i].items())
        out[overlap] = {"ok": ok, "prefetched": shards.prefetched}
    return out


TWO = {"ulysses2": (ParallelConfig(ulysses=2), None), "ring2": (ParallelConfig(ring=2), None),
       "ulysses2-fp8": (ParallelConfig(ulysses=2), {"quant": "fp8-emulated"}),
       "ulysses2-lora": (ParallelConfig(ulysses=2), "lora"),
       "ring2-fbcache": (ParallelConfig(ring=2), {"cache": "fbcache:0.9"})}
FOUR = {"cfg2-ulysses2": (ParallelConfig(cfg=2, ulysses=2), None)}


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    lora = _lora(tmp_path_factory.mktemp("lora"))
    return {2: run_ranks_ok(2, shard_suite, TWO, lora, deadline_s=400.0),
            4: run_ranks_ok(4, shard_suite, FOUR, lora, deadline_s=400.0)}


@pytest.mark.parametrize("world,name", [(2, n) for n in TWO] + [(4, n) for n in FOUR])
def test_split_weights_give_the_unsplit_latents(launches, world, name):
    for rank, results in enumerate(launches[world]):
        got = results[name]
        assert got["equal"], (rank, name)
        whole, shards, buffers = got["bytes"]
        # Each rank holds half of every layer's bytes; each tensor's start is aligned to 16 bytes and
        # each layer padded to 2 x 16 (at most 16 per tensor + 32 per layer: ~25 tensors, 2 layers, 2 kinds).
        padding = 4 * (25 * 16 + 32)
        assert whole / 2 <= shards <= whole / 2 + padding / 2, (rank, whole, shards)
        # Two layers of each kind (block, text K/V) to gather into, one in use and one in flight:
        # with the tiny preset's 2 layers, as many bytes as the whole.
        assert whole <= buffers <= whole + 2 * padding, (rank, whole, buffers)
        assert got["stores_empty"], rank


def test_fbcache_reuses_steps_on_split_weights(launches):
    for results in launches[2]:
        flat = [d for request in results["ring2-fbcache"]["decisions"] for branch in request for d in branch]
        assert True in flat and False in flat, flat  # some steps computed, some reused: both paths ran split


def test_a_lora_or_quantization_after_the_split_is_refused(launches):
    for results in launches[2]:
        for what in ("set_loras", "quantize"):
            assert "split over the ranks" in results[what] and "at load" in results[what], results[what]


def test_layouts_that_cannot_split_are_refused():
    from wan_engine.assembly.pipeline import check_shard_weights

    two = SimpleNamespace(sp_size=2, config=ParallelConfig(ulysses=2))
    with pytest.raises(ValueError, match="shard_weights must be True or False"):
        check_shard_weights("yes", "executor", two, False)
    with pytest.raises(ValueError, match="choose one"):
        check_shard_weights(True, "executor", two, True)
    with pytest.raises(ValueError, match="needs engine='executor', got engine='onnx:out'"):
        check_shard_weights(True, "onnx:out", two, False)
    with pytest.raises(ValueError, match="has none"):
        check_shard_weights(True, "executor", ParallelMesh.single(), False)
    check_shard_weights(False, "reference", ParallelMesh.single(), True)  # off: nothing to refuse


def test_sharded_stores_return_every_layer_whatever_the_order():
    for results in run_ranks_ok(2, stores_suite, deadline_s=120.0):
        assert results[True]["ok"] and results[False]["ok"], results
        # Overlap served 4 takes from a gather started ahead (layers 1, 2, 3, 4 of the first pass);
        # the prefetches of 0 (then 4 was taken) and of 3 (then 1) were waited for and dropped.
        # Without overlap: none.
        assert (results[True]["prefetched"], results[False]["prefetched"]) == (4, 0), results
