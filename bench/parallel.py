"""Communication of the parallel layouts: analytic bytes per rank, and measured collective times.

`comm_volume` counts the bytes ONE rank sends, by the algorithmic minimum of each collective:
- all-to-all over P ranks: a rank keeps 1/P of its tensor and sends the rest, (P-1)/P of it;
- all-gather over P ranks (ring algorithm): a rank sends P-1 shards of its size;
- ring attention over R ranks: the K and V blocks are passed on R-1 times.
Per DiT forward (batch 1, one CFG branch), with S the token count padded to a multiple of the
sequence-parallel degree sp = U*R and s = S/sp tokens per rank:
- Ulysses (degree U), per layer: 4 all-to-alls (q, k, v in; the attention output back) of
  [s, dim] each: 4 * s*dim*(U-1)/U elements;
- ring (degree R), per layer: after the Ulysses all-to-all a rank holds S/R tokens of dim/U
  channels; K and V pass R-1 hops: 2*(R-1) * (S/R)*(dim/U) = 2*(R-1)*s*dim elements;
- USP is both at once; cross-attention, embeddings and the head need no communication;
- the sequence gather before unpatchify: an all-gather of the fp32 head output, out_dim*patch
  values per token, over the sp group: (sp-1) * s*out_dim*pt*ph*pw * 4 bytes.
Per denoising step: two forwards (cond and uncond) without CFG parallelism; with cfg=2 one forward
plus `cfg_combine`, an all-gather of the full fp32 velocity [out_dim, F, H, W] over 2 ranks.
Attention activations are `dtype_bytes` wide (bf16: 2).
With `shard_weights` (each sp rank holds 1/sp of every layer, `parallel/weight_shard.py`) a forward
also all-gathers every block's weights: a rank sends its shard to the sp-1 others, (sp-1)/sp of a
block's bytes per layer (`layer_weight_bytes`: the GEMMs in the compute dtype, the norms fp32). The
text K/V weights are gathered once per request, not per step.

`time_collectives` spawns `world` processes and times an all-to-all and one ring hop
(send to the next rank, receive from the previous) at the given per-rank sizes, checking the
received values; on the CPU (gloo) it measures the plumbing, not GPU interconnect scaling.

CLI: python -m wan_engine.bench.parallel --preset t2v-1.3B --size 832x480 --frames 81 --ulysses 4
"""
from __future__ import annotations

import argparse
import os
import queue as queue_module
import tempfile
import time
import traceback
from datetime import timedelta

import torch

from wan_engine.configs import PRESETS, DiTConfig
from wan_engine.parallel.config import ParallelConfig

from .roofline import dit_tokens, latent_shape
from .timing import summarize

FP32_BYTES = 4  # the head output and the guided velocity are fp32 (official numerics)
COLLECTIVES = ("all-to-all", "ring pass")
SPAWN_DEADLINE_S = 180.0


def layer_weight_bytes(cfg: DiTConfig, dtype_bytes: int = 2) -> dict:
    """Bytes of one layer's weights as the executor stores them: "block" (the step's six GEMMs with
    their biases in the compute dtype, the q/k, cross-attention LayerNorm and cross-q norms fp32)
    and "text_kv" (the cross-attention K/V, twice for the i2v/flf2v image K/V, norm fp32)."""
    d, f = cfg.dim, cfg.ffn_dim
    gemms = (3 * d * d + 3 * d) + 3 * (d * d + d) + (f * d + f) + (d * f + d)  # qkv, o, cross q/o, ffn1, ffn2
    kv = (2 * d * d + 2 * d) * dtype_bytes + d * FP32_BYTES
    return {"block": gemms * dtype_bytes + 5 * d * FP32_BYTES, "text_kv": kv * (2 if cfg.uses_clip else 1)}


def weights_per_rank(cfg: DiTConfig, sp_degree: int, dtype_bytes: int = 2, shard_weights: bool = False,
                     buffers: int = 2) -> int:
    """Bytes of the block and text K/V weights one rank holds: all of them, or with `shard_weights`
    1/sp of every layer plus `buffers` layers of each kind to gather into (2 with the default
    overlap, 1 without); the globals are not counted."""
    layer = layer_weight_bytes(cfg, dtype_bytes)
    whole = cfg.num_layers * (layer["block"] + layer["text_kv"])
    if not shard_weights:
        return whole
    if sp_degree < 2:
        raise ValueError(f"shard_weights needs a sequence-parallel degree >= 2, got {sp_degree}")
    return -(-whole // sp_degree) + buffers * (layer["block"] + layer["text_kv"])


def comm_volume(cfg: DiTConfig, width: int, height: int, frames: int, parallel: ParallelConfig,
                dtype_bytes: int = 2, shard_weights: bool = False) -> dict:
    """Bytes one rank sends per DiT forward and per denoising step under `parallel` (see module doc).

    Raises ValueError for a size the model cannot take, a layout whose Ulysses degree does not
    divide the heads, or `shard_weights` without sequence parallelism.
    """
    if dtype_bytes not in (1, 2, 4):
        raise ValueError(f"dtype_bytes must be 1, 2 or 4, got {dtype_bytes!r}")
    parallel.validate(cfg.num_heads, parallel.world_size)
    tokens = dit_tokens(cfg, width, height, frames)
    u, r, sp = parallel.ulysses, parallel.ring, parallel.sp_degree
    seq_len = -(-tokens // sp) * sp
    local = seq_len // sp
    ulysses_layer = 4 * local * cfg.dim * (u - 1) // u * dtype_bytes
    ring_layer = 2 * (r - 1) * local * cfg.dim * dtype_bytes
    patch_values = cfg.out_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    gather = (sp - 1) * local * patch_values * FP32_BYTES
    weight_gather = 0
    if shard_weights:
        if sp < 2:
            raise ValueError(f"shard_weights needs a sequence-parallel degree >= 2; {parallel.describe()} has none")
        weight_gather = cfg.num_layers * (sp - 1) * -(-layer_weight_bytes(cfg, dtype_bytes)["block"] // sp)
    per_forward = cfg.num_layers * (ulysses_layer + ring_layer) + gather + weight_gather
    forwards_per_step = 2 if parallel.cfg == 1 else 1
    lf, lh, lw = latent_shape(width, height, frames)
    cfg_combine = cfg.out_dim * lf * lh * lw * FP32_BYTES if parallel.cfg == 2 else 0
    return {
        "tokens": tokens,
        "seq_len": seq_len,
        "tokens_per_rank": local,
        "ulysses_bytes_per_layer": ulysses_layer,
        "ring_bytes_per_layer": ring_layer,
        "attention_bytes_per_forward": cfg.num_layers * (ulysses_layer + ring_layer),
        "sequence_gather_bytes": gather,
        "weight_gather_bytes": weight_gather,
        "bytes_per_forward": per_forward,
        "forwards_per_step": forwards_per_step,
        "cfg_combine_bytes": cfg_combine,
        "bytes_per_step": forwards_per_step * per_forward + cfg_combine,
    }


# --- measured collectives ---------------------------------------------------------------------


def _elements(nbytes: int, world: int) -> int:
    """fp32 elements of a per-rank tensor of about `nbytes`, a multiple of `world` (>= world)."""
    return max(world, nbytes // FP32_BYTES // world * world)


def _time_one(fn, device: torch.device) -> float:
    import torch.distributed as dist

    dist.barrier()  # start together: a collective's time is set by the last rank to arrive
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _collective_rank(rank, world, init_file, backend, sizes, repeats, warmup, results):
    import torch.distributed as dist

    torch.set_num_threads(1)  # ranks share the machine's cores
    try:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        nxt, prev = (rank + 1) % world, (rank - 1) % world
        report = {}
        for nbytes in sizes:
            n = _elements(nbytes, world)
            # Chunk i of rank r holds 1000*r + i, so every received chunk names its sender.
            send = (1000.0 * rank + torch.arange(world, device=device, dtype=torch.float32)
                    ).repeat_interleave(n // world)
            recv = torch.empty_like(send)
            block = torch.full((n,), float(rank), device=device)
            incoming = torch.empty_like(block)

            def all_to_all():
                dist.all_to_all_single(recv, send)

            def ring_pass():
                ops = [dist.P2POp(dist.isend, block, nxt), dist.P2POp(dist.irecv, incoming, prev)]
                for work in dist.batch_isend_irecv(ops):
                    work.wait()

            for case, fn in zip(COLLECTIVES, (all_to_all, ring_pass)):
                samples = [_time_one(fn, device) for _ in range(warmup + repeats)][warmup:]
                report[(case, n * FP32_BYTES)] = samples
            expected = (1000.0 * torch.arange(world, device=device) + rank).repeat_interleave(n // world)
            passed_on = torch.equal(incoming, torch.full_like(block, prev))
            report[("verified", n * FP32_BYTES)] = bool(torch.equal(recv, expected) and passed_on)
        everyone = [None] * world
        dist.all_gather_object(everyone, report)
        results.put((rank, True, everyone if rank == 0 else None))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((rank, False, traceback.format_exc()))


def spawn_ranks(target, world: int, args: tuple) -> object:
    """Run `target(rank, world, init_file, *args, results)` on `world` spawned processes.

    Each rank puts `(rank, ok, value)` on `results`; returns rank 0's value, or raises RuntimeError
    with the failing rank's traceback, or when the ranks do not report within SPAWN_DEADLINE_S.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=target, daemon=True, args=(r, world, init_file, *args, results))
                 for r in range(world)]
        for p in procs:
            p.start()
        reports = {}
        try:
            deadline = time.monotonic() + SPAWN_DEADLINE_S
            while len(reports) < world:
                rank, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
                if not ok:
                    raise RuntimeError(f"rank {rank} failed:\n{value}")
                reports[rank] = value
        except queue_module.Empty:
            raise RuntimeError(f"ranks did not report within {SPAWN_DEADLINE_S:.0f} s") from None
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    return reports[0]


def time_collectives(world: int, sizes: list[int] | tuple[int, ...], backend: str = "gloo", *,
                     repeats: int = 5, warmup: int = 1) -> list[dict]:
    """Time an all-to-all and one ring hop of fp32 tensors of ~`sizes` bytes per rank on `world`
    spawned ranks. One row per (collective, size): the per-repeat time is the slowest rank's;
    `bytes` is what one rank sends; `verified` says every rank received the right values.
    """
    if not isinstance(world, int) or world < 2:
        raise ValueError(f"world must be an int >= 2, got {world!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < world:
            raise ValueError(f"backend 'nccl' with world={world} needs {world} CUDA devices, found {gpus}")
    if not sizes or any(not isinstance(s, int) or s < FP32_BYTES for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of byte counts >= {FP32_BYTES}, got {sizes!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    reports = spawn_ranks(_collective_rank, world, (backend, list(sizes), repeats, warmup))
    rows = []
    for (case, nbytes), samples in reports[0].items():
        if case == "verified":
            continue
        slowest = [max(rank_report[(case, nbytes)][i] for rank_report in reports) for i in range(repeats)]
        stats = summarize(slowest, warmup)
        sent = nbytes * (world - 1) // world if case == "all-to-all" else nbytes
        rows.append(dict(
            suite="parallel", case=case, impl=f"{backend}-{world}", shape=f"{nbytes} B per rank",
            dtype="float32", device="cuda" if backend == "nccl" else "cpu", bytes=sent,
            gbps=sent / stats.median_s / 1e9 if stats.median_s > 0 else None,
            verified=all(rank_report[("verified", nbytes)] for rank_report in reports),
            **stats.to_dict(),
        ))
    return rows


# --- CLI ------------------------------------------------------------------------------------------


def format_volume(volume: dict) -> str:
    width = max(map(len, volume))
    return "\n".join(f"{key:<{width}}  {value:>16,}" for key, value in volume.items())


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'case':<11} {'impl':<8} {'bytes/rank':>12} {'median ms':>10} {'GB/s':>8} verified"]
    for row in rows:
        gbps = f"{row['gbps']:.3f}" if row["gbps"] else "-"
        lines.append(f"{row['case']:<11} {row['impl']:<8} {row['bytes']:>12,} {row['median_ms']:>10.3f} "
                     f"{gbps:>8} {row['verified']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="t2v-1.3B", choices=sorted(PRESETS))
    p.add_argument("--size", default="832x480", help="WIDTHxHEIGHT")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--ulysses", type=int, default=1)
    p.add_argument("--ring", type=int, default=1)
    p.add_argument("--cfg-parallel", action="store_true")
    p.add_argument("--dtype-bytes", type=int, default=2)
    p.add_argument("--world", type=int, default=0, help="also time collectives on this many gloo ranks")
    p.add_argument("--sizes", default="65536,1048576", help="comma-separated bytes per rank")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    layout = ParallelConfig(ulysses=args.ulysses, ring=args.ring, cfg=2 if args.cfg_parallel else 1)
    print(f"{args.preset} {width}x{height} {args.frames} frames, {layout.describe()}: bytes sent per rank")
    volume = comm_volume(PRESETS[args.preset].dit, width, height, args.frames, layout, args.dtype_bytes)
    print(format_volume(volume))
    if args.world:
        print(format_rows(time_collectives(args.world, [int(s) for s in args.sizes.split(",")])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
