"""Train the `shapes` preset on the CPU and export it in the official Wan2.1 layout.

    python scripts/train_shapes.py                      # ~85 min on 2 cores, seed 0
    python scripts/train_shapes.py --work-dir DIR       # resume an interrupted run from DIR
    python scripts/train_shapes.py --init-from wan_engine/shapes/weights --work-dir NEW   # train the
        # shipped DiT further (its VAE and text encoder kept; set --dit-minutes), then its decoder
    python scripts/train_shapes.py --init-from wan_engine/shapes/weights --dit-minutes 0 --work-dir NEW
        # only the decoder phase (the DiT and the encoder, hence the latent space, unchanged)

Phases and budgets (wan_engine.shapes.train.TrainPlan): VAE 34 min on 40x40x17 crops, 1,000 clips
encoded (~3 min), DiT 40 min at 96x96x17, then the decoder alone 8 min on whole 96x96x17 clips:
about 85 minutes in all. Checkpoints go to --work-dir every 2 minutes; the export (a few MB) goes
to --out, by default the package's own weights folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from wan_engine.shapes.train import TrainPlan, export, train_all

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "wan_engine" / "shapes" / "weights"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work-dir", type=Path, default=Path(".shapes-train"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-minutes", type=float, default=TrainPlan.vae_minutes)
    p.add_argument("--dit-minutes", type=float, default=TrainPlan.dit_minutes)
    p.add_argument("--decoder-minutes", type=float, default=TrainPlan.decoder_minutes)
    p.add_argument("--latent-clips", type=int, default=TrainPlan.latent_clips)
    p.add_argument("--dit-lr", type=float, default=TrainPlan.dit_lr,
                   help="the DiT's peak learning rate (a continuation may want a lower one)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue from an exported model (official layout): keep its VAE and text encoder, "
                        "train its DiT further")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="keep only the VAE of an exported model; train a new DiT from scratch (no decoder phase)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    for name in ("vae_minutes", "decoder_minutes"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if not (args.dit_minutes > 0 or (args.dit_minutes == 0 and args.init_from is not None)):
        p.error(f"--dit-minutes must be > 0 (0 only with --init-from: keep its DiT), got {args.dit_minutes}")
    if args.init_from is not None and args.vae_from is not None:
        p.error("--init-from and --vae-from exclude each other")
    if not 0 < args.dit_lr < 1:
        p.error(f"--dit-lr must be in (0, 1), got {args.dit_lr}")
    if args.latent_clips < 1:
        p.error("--latent-clips must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = dataclasses.replace(TrainPlan(), seed=args.seed, vae_minutes=args.vae_minutes,
                               dit_minutes=args.dit_minutes, decoder_minutes=args.decoder_minutes,
                               latent_clips=args.latent_clips, dit_lr=args.dit_lr,
                               init_from=None if args.init_from is None else str(args.init_from),
                               vae_from=None if args.vae_from is None else str(args.vae_from))
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {message}", flush=True)

    log(f"plan: {plan.to_json()}")
    trained = train_all(plan, args.work_dir, log)
    out = export(trained, args.out, plan)
    log(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
