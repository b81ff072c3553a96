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
from pathlib import Path

import torch

from wan_engine import validation
from wan_engine.configs import PRESETS, get_preset
from wan_engine.device import resolve_device, resolve_dtype
from wan_engine.env import use_triton_interpreter_without_gpu

from .run import failures, print_results, run_suites, settings_of
from .suites import SUITE_CHOICES, SUITES, expand



def default_out(here: Path = Path(__file__).resolve().parent) -> Path:
    """bench/results of the source checkout this runs from (where committed results live); from an
    installed wheel, ./bench-results in the working directory, never a folder inside site-packages."""
    in_checkout = here.name == "bench" and (here.parent / "setup.py").is_file()
    return here / "results" if in_checkout else Path("bench-results")


DEFAULT_OUT = default_out()
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
                   help="GPU-only tests + full-size kernels/attention/DiT/VAE suites, one report with a verdict "
                        "(see bench/README.md); --suite picks a subset of those four")
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
    # The pipeline's own rules (the model's size grid, 4n+1 frames), so no suite fails on them midway.
    width, height = validation.check_size(args.size or model.sample.size, model.size_multiple)
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


def run_command(args) -> int:
    """Handler of the parsed options (also the `wan-engine bench` subcommand's func); 1 when a
    suite raised or a row failed (crashed, or over its accuracy bound), else 0."""
    use_triton_interpreter_without_gpu()  # before any suite imports a Triton kernel
    command = getattr(args, "bench_command_line", None) or shlex.join(sys.argv)
    if args.gpu_check:
        from .gpu_check import SUITES as CHECK_SUITES
        from .gpu_check import run_gpu_check

        paths = run_gpu_check(args.out or DEFAULT_OUT, dry_run=args.dry_run, device=args.device,
                              tests=args.tests, suites=args.suite or CHECK_SUITES, command=command)
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
    return 1 if failures(suites) else 0
