"""Export a DiT over the 2 GB protobuf limit (the 1.3B preset, seeded random weights) and report
the peak memory: `python -m wan_engine.bench.export_large OUT_DIR [--dtype bf16]`.

The reference DiT is built on the meta device and its random weights drawn straight in the export
dtype, then handed to the executor, which consumes them (no second copy); the ONNX file keeps its
weights as external data. Prints one JSON line: files, bytes, seconds and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    from wan_engine.configs import get_preset
    from wan_engine.engine_config import EngineConfig
    from wan_engine.executor import build_executor
    from wan_engine.export.manifest import ShapeRange
    from wan_engine.export.onnx_export import export_dit
    from wan_engine.loading.checkpoint import load_into
    from wan_engine.loading.random_init import random_state_dict
    from wan_engine.reference.dit import WanDiT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    preset = get_preset("t2v-1.3B")
    start = time.perf_counter()
    with torch.device("meta"):
        dit = WanDiT(preset.dit, compute_dtype=dtype)
    dit = load_into(dit, random_state_dict(dit, seed=0), dtype=dtype, device="cpu", source="random weights")
    executor = build_executor(dit, EngineConfig(dtype=dtype), "cpu", release_reference=True)
    shapes = ShapeRange(batch=(1, 2), frames=(5, 9), height=(64, 96), width=(64, 96))
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = export_dit(executor, preset.vae, args.out, shapes, preset.name, args.dtype, kinds=("full",))
    manifest.save(args.out)
    files = {p.name: p.stat().st_size for p in sorted(args.out.iterdir())}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(files=files, seconds=round(time.perf_counter() - start, 1), peak_rss_bytes=peak,
                          weight_bytes=sum(t.numel() * t.element_size() for t in executor.buffers()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
