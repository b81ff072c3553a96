"""Train the `shapes-a14b` preset: the shipped `shapes` DiT fine-tuned into two Wan2.2-style experts.

    python scripts/train_shapes_experts.py                  # ~30 min on 2 cores
    python scripts/train_shapes_experts.py --work-dir DIR   # resume an interrupted run from DIR

Each expert starts from wan_engine/shapes/weights' DiT and trains --dit-minutes on its share of the
sigmas (high noise: [boundary, 1]; low noise: [0, boundary)); the latents of --latent-clips clips are
encoded once with the shipped VAE. The export (Wan2.2 A14B original layout, bf16 experts) goes to
--out, by default the package's wan_engine/shapes/weights_a14b.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from wan_engine.configs import get_preset
from wan_engine.shapes.experts import export_experts, train_experts
from wan_engine.shapes.train import TrainPlan

SHAPES = Path(__file__).resolve().parents[1] / "wan_engine" / "shapes"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=SHAPES / "weights_a14b")
    p.add_argument("--init-from", type=Path, default=SHAPES / "weights")
    p.add_argument("--work-dir", type=Path, default=Path(".shapes-experts-train"))
    p.add_argument("--dit-minutes", type=float, default=12.0, help="per expert")
    p.add_argument("--dit-lr", type=float, default=6e-5)
    p.add_argument("--latent-clips", type=int, default=1200)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if not args.dit_minutes > 0:
        p.error(f"--dit-minutes must be > 0, got {args.dit_minutes}")
    if not 0 < args.dit_lr < 1:
        p.error(f"--dit-lr must be in (0, 1), got {args.dit_lr}")
    if args.latent_clips < 1:
        p.error("--latent-clips must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    boundary = get_preset("shapes-a14b").experts.boundary
    plan = dataclasses.replace(TrainPlan(), dit_minutes=args.dit_minutes, dit_lr=args.dit_lr,
                               latent_clips=args.latent_clips, init_from=str(args.init_from))
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {message}", flush=True)

    log(f"plan: {plan.to_json()}, boundary {boundary}")
    experts = train_experts(plan, boundary, args.work_dir, log)
    out = export_experts(experts, args.out, plan, boundary,
                         stats=dict(seconds=time.perf_counter() - start))
    log(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
