"""`--suite parallel`: sequence-parallel communication, analytic and measured.

Analytic: bytes each rank sends per denoising step at the run's full size, for Ulysses and ring
at degrees 2, 4 and 8, USP 2x2 and CFG parallelism (bench/parallel.py's `comm_volume`: q, k, v
and o all-to-alls, K/V ring passes, the sequence gather and the CFG combine).
Measured: WORLD ranks spawned on this machine (NCCL when it has >= 2 GPUs, else gloo on the CPU,
where only the plumbing is measured, at <= CPU_MAX_TOKENS tokens) time the q/k/v all-to-all,
Ulysses attention and ring attention on their shards; each rank's output rows (at most 256 of
them) are compared with float64 attention over the whole unsharded sequence. On the CPU the
sequence is not a multiple of the degree, so the padding (masked through kv_len) is exercised.
Then one executor DiT forward on a rank alone and under Ulysses-WORLD and ring-WORLD sequence
parallelism (`parallel.apply_parallel`), compared with the single-process velocity, with the
speedup and scaling efficiency (on the CPU only at the tiny sizes; at full size with >= 2 GPUs).
Last, the row-parallel VAE decode and encode against one rank alone, with each rank's peak working
memory (bench/suites/parallel_vae.py).
"""
from __future__ import annotations

import traceback
from datetime import timedelta

import torch

from ..accuracy import compare_tensors
from ..parallel import spawn_ranks
from ..roofline import dit_forward_cost, dit_tokens
from ..timing import measure, summarize
from .attention import exact_attention, oracle_rows
from .common import BenchContext, SuiteResult, crash_row, dtype_name, make_row, single_cost
from .parallel_vae import rank_vae_calls, vae_context, vae_rows

SUITE = "parallel"
WORLD = 2
DEGREES = (2, 4, 8)
CPU_MAX_TOKENS = 255


def layouts() -> list[tuple[str, dict]]:
    """(label, ParallelConfig kwargs) of the analytic rows: each kind at DEGREES, USP 2x2, CFG 2."""
    out = [(f"{kind}-{d}", {kind: d}) for kind in ("ulysses", "ring") for d in DEGREES]
    return out + [("usp-2x2", dict(ulysses=2, ring=2)), ("cfg-2", dict(cfg=2)),
                  ("cfg-2 x ulysses-2", dict(cfg=2, ulysses=2))]


def _analytic_rows(ctx: BenchContext, result: SuiteResult) -> None:
    from wan_engine.parallel import ParallelConfig

    from ..parallel import comm_volume, weights_per_rank

    cfg = ctx.dit_config
    shape = f"{ctx.size_label} {cfg.num_layers}L"
    whole = weights_per_rank(cfg, 1, ctx.dtype_bytes)
    result.rows.append(make_row(
        ctx, SUITE, "weights per rank", "every layout", None, shape=shape, dtype=dtype_name(ctx.dtype),
        cost=single_cost("weights", 0, whole), note="analytic: blocks and text K/V (globals not counted)"))
    for label, degrees in layouts():
        config = ParallelConfig(**degrees)
        for shard in (False, True) if config.sp_degree > 1 else (False,):
            impl = f"{label} +shard-weights" if shard else label
            try:
                volume = comm_volume(cfg, ctx.width, ctx.height, ctx.frames, config, dtype_bytes=ctx.dtype_bytes,
                                     shard_weights=shard)
            except ValueError as err:  # e.g. a Ulysses degree that does not divide the heads
                result.notes.append(f"parallel {label}: impossible here ({str(err).split(';')[0]})")
                break
            result.rows.append(make_row(
                ctx, SUITE, "comm per step (per rank)", impl, None,
                shape=f"{ctx.size_label} S{volume['tokens']} {cfg.num_layers}L", dtype=dtype_name(ctx.dtype),
                cost=single_cost(label, 0, volume["bytes_per_step"]),
                note=f"analytic (bench.parallel.comm_volume): {volume['forwards_per_step']} forwards/step"
                     + (f", weight gathers {volume['weight_gather_bytes'] / 2**30:.2f} GiB/forward" if shard else "")))
            if shard:
                held = weights_per_rank(cfg, config.sp_degree, ctx.dtype_bytes, shard_weights=True)
                result.rows.append(make_row(
                    ctx, SUITE, "weights per rank", impl, None, shape=shape, dtype=dtype_name(ctx.dtype),
                    cost=single_cost("weights", 0, held),
                    note=f"analytic: 1/{config.sp_degree} of every layer + two layers to gather into "
                         f"({held / whole:.2f}x)"))


# ------------------------------------------------------------------------------------------------
# Measured: one spawned process per rank
# ------------------------------------------------------------------------------------------------

def _local_attention(device: torch.device, dtype: torch.dtype, head_dim: int):
    from wan_engine.attention import resolve_attention_backend

    backend = resolve_attention_backend("auto", device, dtype, head_dim)

    def local(q, k, v, kv_len):
        return backend(q, k, v, kv_len=kv_len, return_lse=True)

    return local, backend.label


def _rank_main(rank: int, world: int, init_file: str, backend: str, spec: dict, results) -> None:
    import torch.distributed as dist

    from wan_engine.parallel import (
        all_to_all_many, ring_attention, split_sequence, ulysses_attention,
    )

    torch.set_num_threads(1)  # the ranks share the machine's cores
    try:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        group = dist.group.WORLD
        dtype = getattr(torch, spec["dtype"])
        b, s, h, d = spec["batch"], spec["tokens"], spec["heads"], spec["head_dim"]
        gen = torch.Generator().manual_seed(spec["seed"])  # the same full tensors on every rank
        full = [torch.randn(b, s, h, d, generator=gen) for _ in range(3)]
        shards = [split_sequence(t, group).to(device, dtype) for t in full]
        local, attention = _local_attention(device, dtype, d)
        out = {}

        def timed(name, fn, repeats=spec["repeats"], warmup=spec["warmup"]):
            dist.barrier()
            stats, value = measure(fn, device, repeats, warmup)
            out[name] = list(stats.samples_s)
            return value

        timed("all-to-all q/k/v", lambda: all_to_all_many(shards, group, scatter_dim=2, gather_dim=1))
        # The oracle for (a subset of) this rank's real query rows; padded rows are dropped.
        start, local_len = rank * shards[0].shape[1], shards[0].shape[1]
        rows = oracle_rows(max(0, min(s - start, local_len)))
        oracle = exact_attention(full[0][:, start + rows], full[1], full[2])
        compared = {}
        for name, fn in (("ulysses", ulysses_attention), ("ring", ring_attention)):
            if name == "ulysses" and h % world:
                continue
            result = timed(f"{name} attention", lambda fn=fn: fn(*shards, group, local, kv_len=s))
            # numpy, not tensors: torch would share tensor storage through this process, which
            # exits right after reporting.
            compared[name] = (result[:, rows.to(device)].double().cpu().numpy(), oracle.numpy())
        if spec["dit_ctx"] is not None:
            compared |= _dit_forwards(spec["dit_ctx"].replace(device=device), world, timed)
        if spec["vae_ctx"] is not None:
            compared["vae"] = rank_vae_calls(spec["vae_ctx"].replace(device=device), group, timed)
        compared["attention"] = attention
        everyone = [None] * world
        dist.all_gather_object(everyone, compared)
        results.put((rank, True, {"samples": out, "outputs": everyone}))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((rank, False, traceback.format_exc()))


def _dit_forwards(ctx: BenchContext, world: int, timed) -> dict:
    """Time one executor forward on this rank alone, then under Ulysses and ring sequence
    parallelism over all ranks (`parallel.apply_parallel`); every rank gets the full velocity,
    compared with the single-process one. Returns {"dit <impl>": (got, want)} as numpy."""
    from wan_engine.parallel import ParallelConfig, ParallelMesh, apply_parallel

    from .common import dit_inputs, executor_factory, random_dit_weights, reference_dit

    build, why = executor_factory()
    if build is None:
        raise RuntimeError(why)
    cfg = ctx.dit_config
    weights = random_dit_weights(cfg, ctx.seed)  # the same on every rank: seeded on the CPU
    inputs = dit_inputs(ctx.replace(device=torch.device("cpu")), cfg, ctx.batch)
    inputs = {k: v.to(ctx.device) for k, v in inputs.items()}

    def executor():
        model = build(reference_dit(cfg, weights, ctx.dtype, ctx.device), dtype=ctx.dtype)
        return model, model.prepare_text(inputs["context"], inputs.get("clip_fea"))

    with torch.inference_mode():
        single, text = executor()
        want = timed("dit forward executor-1", lambda: single.predict(inputs["x"], inputs["t"], text, y=inputs.get("y")))
        compared = {}
        for impl, degrees in ((f"ulysses-{world}", dict(ulysses=world)), (f"ring-{world}", dict(ring=world))):
            if "ulysses" in degrees and cfg.num_heads % world:
                continue
            mesh = ParallelMesh.build(ParallelConfig(**degrees), timeout=timedelta(seconds=60))
            model, text = executor()
            apply_parallel(model, mesh)
            got = timed(f"dit forward {impl}", lambda: model.predict(inputs["x"], inputs["t"], text, y=inputs.get("y")))
            compared[f"dit {impl}"] = (got.double().cpu().numpy(), want.double().cpu().numpy())
    return compared


def _measured_rows(ctx: BenchContext, result: SuiteResult) -> None:
    cfg = ctx.dit_config
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = "nccl" if gpus >= WORLD else "gloo"
    tokens = dit_tokens(cfg, ctx.width, ctx.height, ctx.frames)
    if backend == "gloo":
        tokens = min(tokens, CPU_MAX_TOKENS)
        tokens -= tokens % WORLD == 0 and tokens > 1  # an odd length: the padding path runs too
        result.notes.append(f"parallel: {WORLD} gloo ranks on the CPU ({gpus} GPUs), {tokens} tokens: "
                            f"plumbing only, not GPU scaling")
    dtype = ctx.dtype if backend == "nccl" else torch.float32
    full_tokens = dit_tokens(cfg, ctx.width, ctx.height, ctx.frames)
    run_dit = backend == "nccl" or full_tokens <= CPU_MAX_TOKENS
    if not run_dit:
        result.notes.append(f"parallel: sequence-parallel DiT forward skipped on the CPU at {full_tokens} tokens "
                            f"(runs at <= {CPU_MAX_TOKENS}, or on >= {WORLD} GPUs)")
    vae_ctx = vae_context(ctx, backend, result)
    spec = dict(batch=ctx.batch, tokens=tokens, heads=cfg.num_heads, head_dim=cfg.head_dim,
                dtype=str(dtype).removeprefix("torch."), seed=ctx.seed, repeats=ctx.repeats, warmup=ctx.warmup,
                dit_ctx=ctx.replace(dtype=dtype, ceilings=None) if run_dit else None,
                vae_ctx=vae_ctx.replace(ceilings=None))
    try:
        report = spawn_ranks(_rank_main, WORLD, (backend, spec))
    except RuntimeError as err:  # a rank failed: the measured part is a failed row
        result.rows.append(crash_row(ctx, SUITE, "measured (spawned ranks)", f"{backend}-{WORLD}",
                                     RuntimeError(str(err)[-300:]), dtype=dtype_name(dtype)))
        return
    attention = ", ".join(sorted({str(o.get("attention")) for o in report["outputs"]}))
    elem = torch.empty((), dtype=dtype).element_size()
    shard = ctx.batch * -(-tokens // WORLD) * cfg.dim * elem
    sent = {"all-to-all q/k/v": 3 * shard * (WORLD - 1) / WORLD,
            "ulysses attention": 4 * shard * (WORLD - 1) / WORLD,
            "ring attention": 2 * shard * (WORLD - 1)}
    shape = f"B{ctx.batch} S{tokens} H{cfg.num_heads} D{cfg.head_dim} over {WORLD} ranks"
    dit_times, vae_times = {}, {}
    for name, samples in report["samples"].items():
        stats = summarize(samples, ctx.warmup)
        if name.startswith("dit forward"):
            dit_times[name.split()[-1]] = stats
            continue
        if name.startswith("vae "):
            vae_times[tuple(name.rsplit(" ", 1))] = stats
            continue
        kind = name.split()[0]
        accuracy, oracle = None, ""
        if kind in report["outputs"][0]:
            parts = [rank_outputs[kind] for rank_outputs in report["outputs"]]
            got = torch.cat([torch.from_numpy(p[0]) for p in parts], dim=1)
            want = torch.cat([torch.from_numpy(p[1]) for p in parts], dim=1)
            accuracy, oracle = compare_tensors(got, want), "fp64 attention, one process"
        result.rows.append(make_row(
            ctx, SUITE, name, f"{backend}-{WORLD}", stats, shape=shape, dtype=dtype_name(dtype),
            cost=single_cost(name, 0, sent[name]), accuracy=accuracy, oracle=oracle,
            attention=attention if kind in ("ulysses", "ring") else None, note="GB/s = bytes sent per rank / time"))
    _dit_rows(ctx, result, dit_times, report["outputs"][0], backend, dtype, attention)
    vae_rows(ctx, vae_ctx, result, vae_times, [o["vae"] for o in report["outputs"]], backend, WORLD)


def _dit_rows(ctx: BenchContext, result: SuiteResult, times: dict, outputs: dict, backend: str, dtype,
              attention: str) -> None:
    """Rows of the sequence-parallel forwards: the per-rank share of the work (so %floor is per
    device), accuracy against the single-process executor, speedup and scaling efficiency."""
    if "executor-1" not in times:
        return
    cfg = ctx.dit_config
    forward = dit_forward_cost(cfg, ctx.width, ctx.height, ctx.frames, ctx.batch,
                               dtype_bytes=torch.empty((), dtype=dtype).element_size())
    shape = f"{ctx.size_label} B{ctx.batch} {cfg.num_layers}L"
    base = times["executor-1"].median_s
    for impl, stats in times.items():
        ranks = 1 if impl == "executor-1" else WORLD
        accuracy, oracle, note = None, "(is the oracle)", f"{backend}, one rank alone"
        if ranks > 1:
            got, want = (torch.from_numpy(a) for a in outputs[f"dit {impl}"])
            accuracy, oracle = compare_tensors(got, want), "executor, one process"
            note = (f"{backend}: speedup {base / stats.median_s:.2f}x, scaling efficiency "
                    f"{100 * base / (ranks * stats.median_s):.0f}% (rates: per-rank share)")
        result.rows.append(make_row(
            ctx, SUITE, "dit forward", impl, stats, shape=shape, dtype=dtype_name(dtype),
            cost=single_cost("dit forward", forward.flops / ranks, forward.bytes / ranks), accuracy=accuracy,
            oracle=oracle, note=note, attention=attention))


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    _analytic_rows(ctx, result)
    _measured_rows(ctx, result)
    return result
