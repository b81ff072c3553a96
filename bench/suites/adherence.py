"""`--suite adherence --model shapes` (or `shapes-a14b`): does the video show what the prompt asks?

Generates N prompts x 2 seeds with the trained preset's defaults (held-out combinations, never
seen in training, and as many seen ones), reads colour, background and motion off the frames
(`bench.adherence`) and reports the accuracy of each, the time per clip, and the VAE's
reconstruction PSNR/SSIM on fresh clips of the world. Targets (the `shapes` issue): colour and
background >= 90 %, direction >= 80 %, VAE >= 30 dB; a row below its target is a FAIL.
Lossy options report this score next to their PSNR.
"""
from __future__ import annotations

import time

import torch

from ..accuracy import compare_frames
from ..adherence import accuracy, read_clip, score
from ..timing import summarize
from .common import BenchContext, SuiteResult, dtype_name, make_row

SUITE = "adherence"
SEEDS = (0, 1)
TARGETS = dict(color=0.90, background=0.90, direction=0.80)
VAE_PSNR_TARGET = 30.0
VAE_CLIPS = 8


def prompt_sets() -> dict[str, list]:
    """{"held-out": every held-out combination (24), "seen": 24 training combinations spread
    evenly over the training set}."""
    from wan_engine.shapes.world import HELD_OUT, training_combos

    seen = training_combos()
    step = len(seen) // len(HELD_OUT)
    return {"held-out": list(HELD_OUT), "seen": seen[::step][: len(HELD_OUT)]}


def _verdict(values: dict[str, float]) -> str:
    return "pass" if all(values[k] >= TARGETS[k] for k in TARGETS) else "FAIL"


def run(ctx: BenchContext) -> SuiteResult:
    from wan_engine.configs import SHAPES_PRESETS

    result = SuiteResult()
    if ctx.preset not in SHAPES_PRESETS:
        result.notes.append(f"adherence: needs a trained model (--model {' or '.join(SHAPES_PRESETS)}), "
                            f"got --model {ctx.preset}")
        return result
    from wan_engine.pipelines.t2v import WanPipeline, frames_to_uint8
    from wan_engine.shapes.world import random_clips

    pipe = WanPipeline.from_pretrained(ctx.preset, device=ctx.device, dtype=ctx.dtype)
    size, frames = (ctx.width, ctx.height), ctx.frames
    shape = f"{ctx.size_label}, {ctx.steps or pipe.config.sample.steps} steps"
    for name, combos in prompt_sets().items():
        scores, seconds = [], []
        for combo in combos:
            for seed in SEEDS:
                start = time.perf_counter()
                clip = pipe.generate(combo.caption, size=size, num_frames=frames, steps=ctx.steps, seed=seed)
                seconds.append(time.perf_counter() - start)
                scores.append(score(read_clip(clip), combo))
        acc = accuracy(scores)
        note = (f"{len(combos)} prompts x {len(SEEDS)} seeds: colour {100 * acc['color']:.1f} %, background "
                f"{100 * acc['background']:.1f} %, direction {100 * acc['direction']:.1f} % "
                f"(targets {', '.join(f'{k} {100 * v:.0f} %' for k, v in TARGETS.items())})")
        result.rows.append(make_row(ctx, SUITE, f"prompts {name}", ctx.preset, summarize(seconds), shape=shape,
                                    dtype=dtype_name(ctx.dtype), note=note, verdict=_verdict(acc),
                                    adherence_color=acc["color"], adherence_background=acc["background"],
                                    adherence_direction=acc["direction"]))
    clips, _ = random_clips(VAE_CLIPS, size, frames, seed=12345)
    with torch.inference_mode():
        recon = [pipe.vae.decode(pipe.vae.encode(c[None].to(ctx.device)))[0].cpu() for c in clips]
    # All clips' frames as one [N * F, H, W, 3] stack.
    truth = torch.cat([torch.from_numpy(frames_to_uint8(c)) for c in clips]).numpy()
    decoded = torch.cat([torch.from_numpy(frames_to_uint8(r)) for r in recon]).numpy()
    quality = compare_frames(decoded, truth)
    result.rows.append(make_row(ctx, SUITE, "vae reconstruction", "shapes vae", None, shape=ctx.size_label,
                                dtype="fp32", accuracy=quality, oracle="the world's clips",
                                note=f"{VAE_CLIPS} fresh clips (target >= {VAE_PSNR_TARGET:.0f} dB)",
                                verdict="pass" if quality["psnr"] >= VAE_PSNR_TARGET else "FAIL"))
    return result
