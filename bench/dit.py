"""One DiT forward: the eager reference vs the executor (vs the executor with torch.compile).

Every implementation gets the same seeded random weights (`random_state_dict` on a meta-built
model) and the same random inputs; batch 2 is the CFG pair the executor runs as one batch. The
oracle is the reference in fp32; it runs first and is freed before the others are built, so the
14B shapes fit one card. Rows report the median and p20/p80 time, the error against the oracle,
and the achieved TFLOP/s of the analytic FLOP count (`bench/roofline.py`).

The executor is timed as the runner calls it every step (`predict`, text K/V prepared once per
request beforehand); the reference as the official code runs it (`dit(x, t, context)`).

    python -m wan_engine.bench.dit --preset t2v-1.3B                      # GPU: 480p, 32,760 tokens, B2
    python -m wan_engine.bench.dit --preset t2v-14B --layers 10
    python -m wan_engine.bench.dit --preset t2v-1.3B --grid 2x4x6 --layers 2   # CPU-sized
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch

from wan_engine.configs import DiTConfig, get_preset
from wan_engine.device import resolve_device, resolve_dtype
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.loading.checkpoint import load_into
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import WanDiT

from .roofline import VAE_STRIDE, dit_forward_cost
from .timing import measure

GRID_480P = (21, 30, 52)  # 81 frames at 832x480 on the (1, 2, 2) patch: 32,760 tokens
GRID_CPU = (2, 4, 6)
CPU_LAYERS = 2
TEXT_TOKENS = 48  # prompt length before the zero padding to text_len
IMPLS = ("reference", "executor", "executor+compile")


def grid_for(tokens_or_grid, device: torch.device) -> tuple[int, int, int]:
    """A token grid (f, h, w): given, or factored from a token count as (1, h, w) with h the
    largest divisor <= sqrt(tokens); None gives 480p on GPU and a small grid on CPU."""
    if tokens_or_grid is None:
        return GRID_480P if device.type == "cuda" else GRID_CPU
    if isinstance(tokens_or_grid, int) and not isinstance(tokens_or_grid, bool):
        tokens = tokens_or_grid
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {tokens}")
        h = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
        return (1, h, tokens // h)
    grid = tuple(tokens_or_grid)
    if len(grid) != 3 or not all(isinstance(g, int) and g >= 1 for g in grid):
        raise ValueError(f"grid must be a token count or (frames, height, width) of ints >= 1, got {tokens_or_grid!r}")
    return grid


def video_size_for_grid(cfg: DiTConfig, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """(width, height, frames) whose latent gives `grid` tokens (the roofline model's input)."""
    (pt, ph, pw), (st, sh, sw) = cfg.patch_size, VAE_STRIDE
    f, h, w = grid
    return w * pw * sw, h * ph * sh, (f * pt - 1) * st + 1


def reference_dit(cfg: DiTConfig, weights: dict, dtype: torch.dtype, device: torch.device) -> WanDiT:
    """The eager reference with `weights` (fp32 CPU state dict) computed in `dtype`: GEMM weights
    stored in `dtype`, the official fp32 regions kept fp32 (as every loader does)."""
    with torch.device("meta"):
        model = WanDiT(cfg, compute_dtype=dtype)
    model = load_into(model, dict(weights), dtype=dtype, device=device, source="random weights")
    return model.eval().requires_grad_(False)


def _errors(out: torch.Tensor, oracle: torch.Tensor) -> dict:
    diff = (out.double() - oracle.double())
    return dict(rel_l2=(diff.norm() / oracle.double().norm()).item(), max_abs=diff.abs().max().item())


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_dit(preset: str = "t2v-1.3B", grid=None, batch: int = 2, layers: int | None = None, device=None,
              dtype=None, repeats: int | None = None, warmup: int | None = None, compile: bool | None = None,
              attention: str = "auto", seed: int = 0) -> list[dict]:
    """Time one DiT forward per implementation; one dict per row.

    preset: a model preset name; grid: (f, h, w) token grid or a token count (default: 480p on
    GPU, 2x4x6 on CPU); layers: DiT depth (default: the preset's on GPU, 2 on CPU); dtype: the
    engine dtype (default bf16 on GPU, fp32 on CPU); compile: also time executor+compile
    (default: on GPU only). Rows: impl, preset, grid, tokens, batch, layers, device, dtype,
    median_ms, p20_ms, p80_ms, repeats, rel_l2/max_abs vs the fp32 reference, tflops, note.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    on_gpu = device.type == "cuda"
    repeats = repeats if repeats is not None else (10 if on_gpu else 3)
    warmup = warmup if warmup is not None else (3 if on_gpu else 1)
    compile = on_gpu if compile is None else compile
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    cfg = get_preset(preset).dit
    cfg = dataclasses.replace(cfg, num_layers=layers or (cfg.num_layers if on_gpu else CPU_LAYERS))
    grid = grid_for(grid, device)
    width, height, frames = video_size_for_grid(cfg, grid)
    cost = dit_forward_cost(cfg, width, height, frames, batch, dtype_bytes=torch.finfo(dtype).bits // 8)

    with torch.device("meta"):
        shape_model = WanDiT(cfg)
    weights = random_state_dict(shape_model, seed)  # drawn on the CPU, outside the meta context
    gen = torch.Generator().manual_seed(seed + 1)
    pt, ph, pw = cfg.patch_size
    x = torch.randn(batch, cfg.in_dim, grid[0] * pt, grid[1] * ph, grid[2] * pw, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    context = torch.randn(batch, min(TEXT_TOKENS, cfg.text_len), cfg.text_dim, generator=gen).to(device)

    base = dict(preset=preset, grid="x".join(map(str, grid)), tokens=math.prod(grid), batch=batch,
                layers=cfg.num_layers, device=device.type)
    rows = []

    def record(impl, fn, oracle, note=""):
        """Time `fn`, append its row; returns its output."""
        stats, out = measure(fn, device, repeats, warmup)
        errors = _errors(out, oracle) if oracle is not None else dict(rel_l2=0.0, max_abs=0.0)
        rows.append(dict(base, impl=impl, dtype=str(dtype).removeprefix("torch."), **stats.to_dict(),
                         tflops=cost.flops / stats.median_s / 1e12, **errors, note=note))
        return out

    with torch.inference_mode():
        oracle_model = reference_dit(cfg, weights, torch.float32, device)
        if dtype == torch.float32:  # the oracle is also the engine-dtype reference: time it
            oracle = record("reference", lambda: oracle_model(x, t, context), None, note="the fp32 oracle")
        else:
            oracle = oracle_model(x, t, context)
        del oracle_model
        _release(device)

        reference = reference_dit(cfg, weights, dtype, device) if dtype != torch.float32 else None
        if reference is not None:
            record("reference", lambda: reference(x, t, context), oracle, note="official amp numerics")
        source = reference if reference is not None else reference_dit(cfg, weights, dtype, device)
        variants = [("executor", False)] + ([("executor+compile", True)] if compile else [])
        executors = {name: build_executor(source, EngineConfig(attention=attention, dtype=dtype, compile=flag))
                     for name, flag in variants}
        del reference, source
        _release(device)
        for name, executor in executors.items():
            text = executor.prepare_text(context)
            note = f"ops {executor.ops.backend}, attention {executor.ops.attention.name}"
            if executor.engine_config.compile:
                start = time.perf_counter()
                executor.predict(x, t, text)
                note += f", first call (compile) {time.perf_counter() - start:.1f} s"
            record(name, lambda: executor.predict(x, t, text), oracle, note)
    return rows


def format_rows(rows: list[dict]) -> str:
    header = f"{'impl':<18} {'median ms':>10} {'p20':>9} {'p80':>9} {'TFLOP/s':>8} {'rel L2':>9}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['impl']:<18} {r['median_ms']:>10.2f} {r['p20_ms']:>9.2f} {r['p80_ms']:>9.2f} "
                     f"{r['tflops']:>8.2f} {r['rel_l2']:>9.2e}  {r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DiT forward: reference vs executor")
    parser.add_argument("--preset", default="t2v-1.3B")
    parser.add_argument("--grid", default=None, help="FxHxW token grid or a token count (default: 480p on GPU)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    grid = None
    if args.grid:
        parts = args.grid.lower().split("x")
        grid = tuple(int(p) for p in parts) if len(parts) == 3 else int(args.grid)
    rows = bench_dit(args.preset, grid, args.batch, args.layers, args.device, args.dtype, args.repeats,
                     compile=args.compile, attention=args.attention)
    r = rows[0]
    print(f"DiT forward {r['preset']}: {r['layers']} layers, grid {r['grid']} ({r['tokens']} tokens), "
          f"batch {r['batch']}, {r['device']}")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
