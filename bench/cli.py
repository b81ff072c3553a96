"""`python -m wan_engine.bench` / `wan-engine bench`: run suites, print the table, write the reports.

    python -m wan_engine.bench --suite all --model tiny                 # CPU, < 5 minutes
    python -m wan_engine.bench --suite dit --model t2v-1.3B --size 832x480 --frames 81
    python -m wan_engine.bench --suite roofline --model t2v-14B --size 1280x720 --frames 81
    python -m wan_engine.bench --gpu-check [--dry-run] --out DIR

`add_bench_parser(subparsers)` adds the same options as a `bench` subcommand of another parser.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from wan_engine import validation
from wan_engine.configs import PRESETS, get_preset
from wan_engine.device import resolve_device, resolve_dtype

from .suites import SUITE_CHOICES, SUITES, expand

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
GPU_DEFAULTS = dict(repeats=10, warmup=3)
CPU_DEFAULTS = dict(repeats=3, warmup=1)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 832x480 (WIDTHxHEIGHT), got {text!r}") from None
    return width, height


def parse_suites(text: str) -> list[str]:
    try:
        return expand([s.strip() for s in text.split(",") if s.strip()] or ["all"])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", type=parse_suites, default=None, metavar="NAME[,NAME]",
                   help=f"one or more of {', '.join(SUITE_CHOICES)} (default: all)")
    p.add_argument("--model", default="tiny", choices=sorted(PRESETS), help="preset (seeded random weights)")
    p.add_argument("--size", type=parse_size, default=None, help="WIDTHxHEIGHT (default: the preset's)")
    p.add_argument("--frames", type=int, default=None, help="4n+1 frames (default: the preset's)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="engine dtype bf16|fp16|fp32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 10 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls (default: 3 on GPU, 1 on CPU)")
    p.add_argument("--batch", type=int, default=2, help="DiT batch (default 2: the CFG pair)")
    p.add_argument("--layers", type=int, default=None, help="DiT depth for dit/step/memory (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for e2e (default: the preset's)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder for JSON/Markdown/plots and history.csv (default: {DEFAULT_OUT})")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only, write no files")
    p.add_argument("--no-ceilings", dest="ceilings", action="store_false",
                   help="skip measuring the matmul/copy ceilings (no %% of floor)")
    p.add_argument("--tflops", type=float, default=None, help="use this matmul ceiling instead of measuring")
    p.add_argument("--gbps", type=float, default=None, help="use this copy ceiling instead of measuring")
    p.add_argument("--gpu-check", action="store_true",
                   help="GPU-only tests + full-size kernels/DiT/VAE benchmarks, one report (see bench/README.md)")
    p.add_argument("--dry-run", action="store_true", help="with --gpu-check: the same flow at reduced sizes")
    p.add_argument("--tests", default="tests", help="with --gpu-check: the test folder for the GPU-only tests")


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to an argparse subparsers object (e.g. the `wan-engine` CLI); returns the parser."""
    p = subparsers.add_parser("bench", help="benchmark suites (speed, accuracy, roofline)",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run_command)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wan_engine.bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.bench_command_line = shlex.join(["python", "-m", "wan_engine.bench", *argv])
    try:
        return run_command(args)
    except (ValueError, OSError) as err:
        print(f"wan_engine.bench: error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------

def use_triton_interpreter_without_gpu() -> None:
    """Without CUDA, Triton kernels only run interpreted, and the switch must be set before the
    kernel modules are imported (they bind it at import); a value the user set is kept."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _positive(name: str, value, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def check_out_dir(out: Path) -> None:
    """--out is a folder, or can be created: checked before the suites run, not after."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; it must name a folder")
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r} cannot be written: {folder} is not a writable folder")


def make_context(args):
    """A BenchContext from parsed options (ValueError on bad values, before any model is built)."""
    from .suites.common import BenchContext

    device = resolve_device(args.device)
    # The analytic model runs nothing: default to the official inference dtype, not the device's.
    roofline_only = args.suite == ["roofline"] and args.dtype is None
    dtype = torch.bfloat16 if roofline_only else resolve_dtype(args.dtype, device)
    model = get_preset(args.model)
    for name in ("repeats", "frames", "batch", "layers", "steps"):
        _positive(f"--{name}", getattr(args, name))
    _positive("--warmup", args.warmup, allow_zero=True)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    # The pipeline's own rules (multiples of 16, 4n+1 frames), so no suite fails on them midway.
    width, height = validation.check_size(args.size or model.sample.size)
    validation.check_num_frames(args.frames or model.sample.num_frames)
    return BenchContext(
        preset=args.model, model=model, width=width, height=height,
        frames=args.frames or model.sample.num_frames, device=device, dtype=dtype,
        repeats=args.repeats or defaults["repeats"],
        warmup=defaults["warmup"] if args.warmup is None else args.warmup,
        batch=args.batch, layers=args.layers, steps=args.steps, compile=args.compile,
        seed=args.seed,
    )


def resolve_ceilings(args, device: torch.device, suites: list[str]):
    """Given (--tflops/--gbps), measured, or None (--no-ceilings, or a roofline-only run)."""
    from .ceilings import MeasuredCeilings, measure_ceilings

    if (args.tflops is None) != (args.gbps is None):
        raise ValueError("--tflops and --gbps must be given together")
    if args.tflops is not None:
        if not (args.tflops > 0 and args.gbps > 0):
            raise ValueError(f"--tflops and --gbps must be > 0, got {args.tflops} and {args.gbps}")
        return MeasuredCeilings(args.tflops, args.gbps, "given", 0, 0, device.type,
                                f"given on the command line: {args.tflops} TFLOP/s, {args.gbps} GB/s")
    if not args.ceilings or suites == ["roofline"]:
        return None
    return measure_ceilings(device)


def run_suites(names: list[str], ctx, log=print) -> dict:
    """{suite: {"rows", "notes", "text", "telemetry", "seconds"}}; a suite that raises is recorded
    as a note with its error (the others still run)."""
    from .suites import run_suite
    from .telemetry import GpuTelemetry

    suites = {}
    for name in names:
        log(f"[bench] {name} ...")
        start = time.perf_counter()
        with GpuTelemetry(ctx.device) as telemetry:
            try:
                result = run_suite(name, ctx)
                entry = dict(rows=result.rows, notes=result.notes, text=result.text)
            except Exception as err:  # noqa: BLE001 - one broken suite must not lose the others
                tail = traceback.format_exc().strip().splitlines()[-3:]
                entry = dict(rows=[], notes=[f"{name}: suite failed: {type(err).__name__}: {err}", *tail],
                             text="", failed=True)
        entry["telemetry"] = telemetry.summary().to_dict()
        entry["seconds"] = time.perf_counter() - start
        suites[name] = entry
        log(f"[bench] {name} done in {entry['seconds']:.1f} s")
    return suites


def settings_of(ctx) -> dict:
    from .suites.common import dtype_name

    return dict(model=ctx.preset, size=f"{ctx.width}x{ctx.height}", frames=ctx.frames, device=str(ctx.device),
                dtype=dtype_name(ctx.dtype), batch=ctx.batch, layers=ctx.layers or ctx.model.dit.num_layers,
                repeats=ctx.repeats, warmup=ctx.warmup, steps=ctx.steps or ctx.model.sample.steps,
                compile=ctx.compile, seed=ctx.seed)


def print_results(suites: dict, log=print) -> None:
    from .report import format_table, telemetry_line

    for name, suite in suites.items():
        log(f"\n== {name} ({suite['seconds']:.1f} s) ==")
        if suite.get("text"):
            log(suite["text"])
        if suite["rows"] and name != "roofline":
            log(format_table(suite["rows"]))
        for note in suite["notes"]:
            log(f"  note: {note}")
        if (suite.get("telemetry") or {}).get("available"):
            log(f"  {telemetry_line(suite['telemetry'])}")


def run_command(args) -> int:
    """Handler of the parsed options (also the `wan-engine bench` subcommand's func)."""
    use_triton_interpreter_without_gpu()
    command = getattr(args, "bench_command_line", None) or shlex.join(sys.argv)
    if args.gpu_check:
        from .gpu_check import run_gpu_check

        paths = run_gpu_check(args.out or DEFAULT_OUT, dry_run=args.dry_run, device=args.device,
                              tests=args.tests, command=command)
        print(f"[gpu-check] wrote {paths['markdown']} and {paths['json']}")
        return 1 if paths.get("failed") else 0
    if args.dry_run:
        raise ValueError("--dry-run only applies to --gpu-check")

    from .report import SCHEMA, environment, write_outputs

    names = args.suite or list(SUITES)
    ctx = make_context(args)  # validates every option before anything is measured
    write = args.write and (args.out is not None or names != ["roofline"])
    if write:
        check_out_dir(args.out or DEFAULT_OUT)
    ceilings = resolve_ceilings(args, ctx.device, names)
    ctx = ctx.replace(ceilings=ceilings)
    if ceilings is not None:
        print(f"[bench] ceilings: {ceilings.matmul_tflops:.3g} TFLOP/s, {ceilings.copy_gbps:.4g} GB/s "
              f"({ceilings.label})")
    suites = run_suites(names, ctx)
    print_results(suites)
    if write:
        report = dict(schema=SCHEMA, environment=environment(ctx.device, command), settings=settings_of(ctx),
                      ceilings=ceilings.to_dict() if ceilings else None, suites=suites, extra={})
        label = f"{'-'.join(names) if len(names) < len(SUITES) else 'all'}-{ctx.preset}"
        paths = write_outputs(report, args.out or DEFAULT_OUT, label)
        print("\n" + "\n".join(f"[bench] wrote {kind}: {path}" for kind, path in paths.items()))
    return 1 if any(s.get("failed") for s in suites.values()) else 0
