"""Micro-benchmarks of the fused Triton kernels against the torch ops they replace.

Each op runs three ways on the same inputs: the Triton kernel ("triton"), the eager torch ops of the
official math ("torch": the kernel's fp32 `*_ref` oracle, which is what eager code computes) and
`torch.compile` of those ops ("torch.compile"). The kernels are memory-bound, so every row reports
GB/s: the compulsory traffic (each input read once, each output written once) over the median time,
and, given the card's measured copy bandwidth, the share of it reached.

Timing: CUDA events around each call after warm-up on a GPU, perf_counter on CPU (where the
kernels run under Triton's interpreter: CPU numbers only prove the plumbing). Shapes follow the
block: an fp32 residual stream and modulation, GEMM-side tensors in `dtype`.

CLI (GPU):  python -m wan_engine.bench.kernels --json bench/results/kernels.json
CLI (CPU):  TRITON_INTERPRET=1 python -m wan_engine.bench.kernels --preset tiny
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from typing import Callable, NamedTuple, Sequence

import torch

from wan_engine.kernels import (
    gated_residual_norm,
    gated_residual_norm_ref,
    layer_norm_affine,
    layer_norm_affine_ref,
    layer_norm_modulate,
    layer_norm_modulate_ref,
    rms_norm,
    rms_norm_ref,
    rms_norm_rope_qk,
    rms_norm_rope_qk_ref,
)

PROVIDERS = ("triton", "torch", "torch.compile")
OPS = ("layer_norm_modulate", "layer_norm_affine", "gated_residual_norm", "rms_norm_rope_qk", "rms_norm")
EPS = 1e-6


class BenchShape(NamedTuple):
    batch: int
    seq: int
    dim: int
    num_heads: int


SHAPE_PRESETS = {
    # 81 frames at 832x480: 32,760 tokens; batch 2 = the two CFG branches.
    "1.3B-480p": [BenchShape(2, 32760, 1536, 12)],
    "14B-480p": [BenchShape(2, 32760, 5120, 40)],
    "full": [BenchShape(2, 32760, 1536, 12), BenchShape(2, 32760, 5120, 40)],
    # Interpreted Triton costs ~1 ms per row: a handful of rows of the tiny model.
    "tiny": [BenchShape(1, 8, 64, 2)],
}


class OpCase(NamedTuple):
    kernel: Callable
    reference: Callable  # the eager torch ops; same call signature as the kernel
    args: tuple
    kwargs: dict


def op_cases(shape: BenchShape, dtype: torch.dtype, device) -> dict[str, OpCase]:
    """The ops at `shape` with random inputs laid out as the Wan block has them."""
    batch, seq, dim, heads = shape
    if dim % heads or (dim // heads) % 2:
        raise ValueError(f"num_heads must divide dim into an even head_dim; got dim={dim}, num_heads={heads}")
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*size, dtype=torch.float32, std=1.0):
        return (torch.randn(*size, generator=gen, device=device) * std).to(dtype)

    stream = rand(batch, seq, dim, std=3.0)  # fp32 residual stream
    e0 = rand(batch, 6, dim, std=0.5)  # fp32 modulation, viewed per chunk as the block does
    branch = rand(batch, seq, dim, dtype=dtype)
    qkv = rand(batch, seq, 3 * dim, dtype=dtype, std=2.0)
    angles = rand(seq, dim // heads // 2, std=50.0)
    weight = 1 + rand(dim, dtype=dtype, std=0.3)
    return {
        "layer_norm_modulate": OpCase(
            layer_norm_modulate, layer_norm_modulate_ref, (stream, e0[:, 0], e0[:, 1], EPS), {"out_dtype": dtype}
        ),
        "layer_norm_affine": OpCase(
            layer_norm_affine, layer_norm_affine_ref, (stream, 1 + e0[0, 2], e0[0, 3], EPS), {"out_dtype": dtype}
        ),
        "gated_residual_norm": OpCase(
            gated_residual_norm,
            gated_residual_norm_ref,
            (stream, branch, e0[:, 2]),
            {"shift": e0[:, 3], "scale": e0[:, 4], "eps": EPS, "out_dtype": dtype},
        ),
        "rms_norm_rope_qk": OpCase(
            rms_norm_rope_qk,
            rms_norm_rope_qk_ref,
            (qkv[..., :dim], qkv[..., dim : 2 * dim], weight, weight.flip(0),
             angles.cos(), angles.sin(), heads, EPS),
            {},
        ),
        "rms_norm": OpCase(rms_norm, rms_norm_ref, (branch, weight, EPS), {}),
    }


def bytes_moved(case: OpCase, outputs) -> int:
    """Compulsory traffic: every tensor argument read once, every output written once."""
    tensors = [a for a in (*case.args, *case.kwargs.values()) if isinstance(a, torch.Tensor)]
    tensors += list(outputs) if isinstance(outputs, tuple) else [outputs]
    return sum(t.numel() * t.element_size() for t in tensors)


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> torch.Tensor:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return torch.tensor(times, dtype=torch.float64)


def _max_abs_diff(a, b) -> float:
    pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
    return max((x.double() - y.double()).abs().max().item() for x, y in pairs)


def default_providers(device) -> tuple[str, ...]:
    # On CPU, inductor builds C++ for minutes on a small box and times a code path the engine
    # never runs; it stays available by naming it explicitly.
    return PROVIDERS if torch.device(device).type == "cuda" else ("triton", "torch")


def bench_kernels(
    shapes: Sequence[BenchShape],
    dtype: torch.dtype,
    device,
    repeats: int,
    warmup: int,
    *,
    providers: Sequence[str] | None = None,
    ops: Sequence[str] | None = None,
    copy_gbps: float | None = None,
) -> list[dict]:
    """Time every op at every shape with every provider; one dict per (shape, op, provider).

    Rows hold the shape, median/p20/p80 milliseconds, GB/s, speedups of this row over the eager
    and the compiled torch rows (when those ran), the largest difference of the Triton output
    from the eager output, and `pct_of_copy` when the card's copy bandwidth `copy_gbps` is given.
    """
    device = torch.device(device)
    providers = tuple(default_providers(device) if providers is None else providers)
    unknown = set(providers) - set(PROVIDERS)
    if unknown or not providers:
        raise ValueError(f"providers must be a non-empty subset of {PROVIDERS}; got {providers}")
    ops = tuple(OPS if ops is None else ops)
    if not ops or set(ops) - set(OPS):
        raise ValueError(f"ops must be a non-empty subset of {OPS}; got {ops}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    if device.type == "cpu" and not _kernels_interpreted():
        raise ValueError("on CPU the Triton kernels need the interpreter: set TRITON_INTERPRET=1 "
                         "before wan_engine.kernels is imported")
    rows = []
    for shape in shapes:
        shape = BenchShape(*shape)
        cases = op_cases(shape, dtype, device)
        for op in ops:
            rows += _bench_op(op, cases[op], shape, dtype, device, providers, repeats, warmup, copy_gbps)
    return rows


def _kernels_interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    from wan_engine.kernels.rms_norm import _rms_norm_kernel

    return isinstance(_rms_norm_kernel, InterpretedFunction)


def _bench_op(op, case, shape, dtype, device, providers, repeats, warmup, copy_gbps) -> list[dict]:
    functions = {"triton": case.kernel, "torch": case.reference}
    if "torch.compile" in providers:
        functions["torch.compile"] = torch.compile(case.reference, dynamic=False)
    eager_out = case.reference(*case.args, **case.kwargs)
    nbytes = bytes_moved(case, eager_out)
    medians, rows = {}, []
    for provider in providers:
        fn = functions[provider]
        out = fn(*case.args, **case.kwargs)
        times = _time_ms(lambda: fn(*case.args, **case.kwargs), device, repeats, warmup)
        p20, median, p80 = torch.quantile(times, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)).tolist()
        medians[provider] = median
        row = dict(
            op=op, provider=provider, **shape._asdict(), dtype=str(dtype).removeprefix("torch."),
            device=device.type, median_ms=median, p20_ms=p20, p80_ms=p80,
            gbps=nbytes / (median * 1e-3) / 1e9, bytes=nbytes,
            max_abs_diff_vs_torch=_max_abs_diff(out, eager_out),
        )  # fmt: skip
        if copy_gbps:
            row["pct_of_copy"] = 100 * row["gbps"] / copy_gbps
        rows.append(row)
    for row in rows:
        for base in ("torch", "torch.compile"):
            if base in medians:
                row[f"speedup_vs_{base.replace('.', '_')}"] = medians[base] / row["median_ms"]
    return rows


def measure_copy_gbps(device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """The card's practical bandwidth: a device-to-device copy (read + write) of `nbytes`."""
    device = torch.device(device)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    median = _time_ms(lambda: dst.copy_(src), device, repeats, warmup=3).median().item()
    return 2 * src.numel() * 4 / (median * 1e-3) / 1e9


def format_table(rows: list[dict]) -> str:
    header = f"{'op':<20} {'provider':<14} {'shape (B,S,dim,H)':<22} {'median ms':>10} {'p20-p80 ms':>17}"
    header += f" {'GB/s':>8} {'vs eager':>9} {'vs compile':>10} {'%copy':>6} {'max diff':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = f"{r['batch']},{r['seq']},{r['dim']},{r['num_heads']}"
        spread = f"{r['p20_ms']:.4g}-{r['p80_ms']:.4g}"
        vs_eager = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        vs_compile = f"{r['speedup_vs_torch_compile']:.2f}x" if "speedup_vs_torch_compile" in r else "-"
        pct = f"{r['pct_of_copy']:.0f}" if "pct_of_copy" in r else "-"
        lines.append(
            f"{r['op']:<20} {r['provider']:<14} {shape:<22} {r['median_ms']:>10.4g} {spread:>17} "
            f"{r['gbps']:>8.4g} {vs_eager:>9} {vs_compile:>10} {pct:>6} {r['max_abs_diff_vs_torch']:>9.2g}"
        )
    return "\n".join(lines)


def environment(device) -> dict:
    import triton

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return dict(device=name, torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(SHAPE_PRESETS), default=None,
                        help="shapes (default: full on a GPU, tiny on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--repeats", type=int, default=None, help="default: 50 on a GPU, 5 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on a GPU, 1 on CPU")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=None)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=None)
    parser.add_argument("--json", default=None, help="write environment and rows to this file")
    args = parser.parse_args(argv)  # fmt: skip

    on_gpu = torch.device(args.device).type == "cuda"
    shapes = SHAPE_PRESETS[args.preset or ("full" if on_gpu else "tiny")]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    copy_gbps = measure_copy_gbps(args.device) if on_gpu else None
    rows = bench_kernels(
        shapes, dtype, args.device,
        args.repeats if args.repeats is not None else (50 if on_gpu else 5),
        args.warmup if args.warmup is not None else (10 if on_gpu else 1),
        providers=args.providers, ops=args.ops, copy_gbps=copy_gbps,
    )  # fmt: skip
    command = " ".join(["python -m wan_engine.bench.kernels", *(sys.argv[1:] if argv is None else argv)])
    env = environment(args.device) | {"copy_gbps": copy_gbps, "command": command}
    print(json.dumps(env))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": env, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
