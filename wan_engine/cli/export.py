"""`wan-engine export`: the DiT or the VAE decoder/encoder chunks to ONNX (or TensorRT engines).

Part of the command line (`wan_engine.cli` adds it to its parser); refusals happen before the
model loads where the checkpoint's headers tell enough.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .lora_options import add_lora_options, check_lora_options, parse_lora_options


def _range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition("-")
        return (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a range must look like 480-720 (or one value); got {text!r}") from None


def add_export_parser(sub) -> None:
    """The `export` subcommand on the `wan-engine` parser's subparsers `sub`."""
    p = sub.add_parser("export", help="export the DiT or the VAE decoder/encoder chunks to ONNX (or TensorRT engines)")
    p.add_argument("--model", required=True, help="model directory or preset")
    p.add_argument("--component", choices=("dit", "vae-decoder", "vae-encoder"), required=True)
    p.add_argument("--format", choices=("onnx", "trt"), default="onnx",
                   help="onnx (verified with onnxruntime) or trt (TensorRT engines built from the ONNX; unverified)")
    p.add_argument("--out", required=True, help="the export directory (a manifest.json is written last)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="the DiT's compute dtype")
    p.add_argument("--batch", type=_range, default=(1, 2), help="batch range, within 1-2 (default 1-2)")
    p.add_argument("--frames", type=_range, default=(5, 81), help="frame range, 4n+1 (default 5-81)")
    p.add_argument("--height", type=_range, default=(480, 720), help="height range in pixels (default 480-720)")
    p.add_argument("--width", type=_range, default=(480, 1280), help="width range in pixels (default 480-1280)")
    p.add_argument("--device", default="cpu")
    add_lora_options(p)  # merged before the export: the graphs hold the merged weights
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    import torch

    from ..assembly.experts import has_experts
    from ..export.manifest import ShapeRange
    from ..export.onnx_export import export_onnx
    from ..export.versions import check_torch_for_export
    from ..pipelines.t2v import WanPipeline

    check_torch_for_export(torch.__version__)  # before the model load
    shapes = ShapeRange(batch=args.batch, frames=args.frames, height=args.height, width=args.width)
    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty: give a new directory (an export is never written over another)")
    loras = parse_lora_options(args)
    check_lora_options(args, has_experts(args.model))
    if args.component != "dit" and (args.lora or args.high_noise_lora or args.low_noise_lora):
        raise ValueError(f"--lora: LoRAs change the DiT's weights; the {args.component} export takes none")
    pipe = WanPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, cuda_graphs=False,
                                       loras=loras)
    start = time.perf_counter()
    onnx_dir = out if args.format == "onnx" else out / "onnx"
    written = export_onnx(pipe, args.component, onnx_dir, shapes)
    if args.format == "trt":
        from ..export.tensorrt import build_engines, profiles_for

        # Each ONNX folder (a two-expert DiT's are onnx/high_noise and onnx/low_noise) builds into
        # the same place under `out`.
        written = [(out / folder.relative_to(onnx_dir),
                    build_engines(folder, out / folder.relative_to(onnx_dir), profiles_for(folder, manifest, pipe.config),
                                  fp16=args.dtype == "fp16", bf16=args.dtype == "bf16"))
                   for folder, manifest in written]
    for folder, manifest in written:
        what = args.component if manifest.expert is None else f"{args.component} ({manifest.expert} expert)"
        loras = "".join(f", LoRA {r['file']} x{r['strength']:g}" for r in manifest.loras)
        weights = f", weights {manifest.weights.rpartition(':')[2][:12]}" if manifest.weights else ""
        print(f"exported {what} of {manifest.model} to {folder} ({manifest.format}, {manifest.dtype}, "
              f"{len(manifest.files)} graph(s){loras}{weights}): {', '.join(manifest.files.values())}")
    print(f"export took {time.perf_counter() - start:.1f} s")
    return 0
