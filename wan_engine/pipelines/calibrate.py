"""`calibrate_pipeline`: uncached runs over a set of prompts, recorded, and the fitted calibration."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from ..cache import Calibration, StepCache, timestep_signal
from ..cache.fit import fit_calibration
from ..executor import WanExecutor
from ..reference.schedulers import make_solver
from .t2v import WanPipeline

# Varied subjects and motion, in the spirit of VBench's prompt list.
DEFAULT_PROMPTS = (
    "a cat walking across a sunny garden",
    "a red sports car driving along a coastal road at sunset",
    "waves crashing on a rocky shore, slow motion",
    "a person dancing in a neon-lit street at night",
    "time-lapse of clouds moving over snowy mountains",
    "a hummingbird hovering near a flower",
    "city traffic seen from above, evening",
    "a chef chopping vegetables in a busy kitchen",
)


def calibrate_pipeline(pipe: WanPipeline, prompts: Sequence[str] | None = None, *, seeds: int = 1,
                       policies: str = "all", steps: int | None = None, size=None, num_frames: int | None = None,
                       images: Sequence | None = None, last_images: Sequence | None = None,
                       progress: Callable[[str], None] | None = None) -> Calibration:
    """Run every prompt x seed uncached with the block stack's residual and the output recorded
    each step, and fit the TeaCache polynomials and MagCache ratios (`cache.fit`). One process.
    A two-expert model records both experts' steps in one run and fits MagCache alone.

    images (paths, PIL images or uint8 arrays): the first frames, prompt i taking image i mod
    len(images) (last_images alike, for flf2v). An i2v or flf2v model needs them; a TI2V model
    runs the prompts as text-to-video and, given images, again with them, for its image-request
    MagCache ratios (`magcache_image`)."""
    if not isinstance(pipe.dit, WanExecutor):
        raise ValueError("calibration records the executor's block stack: build the pipeline with engine='executor'")
    if pipe.is_parallel:
        raise ValueError("calibrate in one process: the recorded norms are per token over the whole sequence")
    if policies not in ("teacache", "magcache", "all"):
        raise ValueError(f"policies must be teacache, magcache or all; got {policies!r}")
    if pipe.low_noise_dit is not None:
        if policies == "teacache":
            raise ValueError("a two-expert model (Wan2.2 A14B) calibrates MagCache only: TeaCache's polynomial "
                             "belongs to one DiT (FBCache needs no calibration)")
        policies = "magcache"  # "all" the model can use: MagCache's ratios over both experts' steps
    task = pipe.config.dit.task
    check_calibration_images(task, images, last_images, policies)
    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    frames = dict(size=size, num_frames=num_frames, steps=steps)
    with torch.inference_mode():
        image_pass = task == "ti2v" and bool(images)  # TI2V: the text runs, then the same prompts with images
        count = len(prompts) * seeds * (2 if image_pass else 1)
        runs, request = _record(pipe, prompts, seeds, frames, None if task == "ti2v" else images,
                                None if task == "ti2v" else last_images, progress, (0, count))
        image_runs = _record(pipe, prompts, seeds, frames, images, None, progress, (len(runs), count))[0] \
            if image_pass else None
        timesteps = make_solver(request.solver, request.steps, request.shift).timesteps.to(pipe.device)
        signals = {"plain": timestep_signal(pipe.dit, timesteps, False),
                   "ret_steps": timestep_signal(pipe.dit, timesteps, True)}
    fitted = dict(prompts=len(prompts), seeds=seeds, steps=request.steps, shift=request.shift,
                  size=[request.width, request.height], num_frames=request.num_frames, solver=request.solver,
                  guidance=request.guidance, dtype=str(pipe.dtype).replace("torch.", ""))
    if images:
        fitted["images"] = len(images)
    calibration = fit_calibration(runs, signals, pipe.config.name, fitted, policies)
    if image_runs is not None:
        image_ratios = fit_calibration(image_runs, signals, pipe.config.name, fitted, "magcache").magcache
        calibration = dataclasses.replace(calibration, magcache_image=image_ratios)
    return calibration


def check_calibration_images(task: str, images, last_images, policies: str = "all") -> None:
    """Refuse images a model of `task` (`DiTConfig.task`) cannot calibrate with, or their absence."""
    if last_images and not images:
        raise ValueError("last_images needs images (the first frames) as well")
    if task == "t2v" and images:
        raise ValueError("images: a text-to-video model calibrates from its prompts alone")
    if task in ("i2v", "flf2v") and not images:
        raise ValueError(f"images: an {task} model generates from a first frame; give the calibration runs' "
                         f"images (--images)")
    if task == "flf2v" and not last_images:
        raise ValueError("last_images: an flf2v model generates between a first and a last frame; give them "
                         "(--last-images)")
    if task != "flf2v" and last_images:
        raise ValueError(f"last_images: only an flf2v model takes last frames; this is {task}")
    if task == "ti2v" and images and policies == "teacache":
        raise ValueError("images: a TI2V model's image runs fit MagCache's image ratios, and --cache teacache "
                         "fits none; calibrate magcache or all")


def _record(pipe: WanPipeline, prompts: list[str], seeds: int, frames: dict, images, last_images, progress,
            counted: tuple[int, int]):
    """Each prompt x seed denoised uncached with the signals recorded: (their signals, a request).
    counted: (runs done before this call, runs in the whole calibration), for the progress lines."""
    runs, request = [], None
    for i, prompt in enumerate(prompts):
        image = images[i % len(images)] if images else None
        last = last_images[i % len(last_images)] if last_images else None
        for seed in range(seeds):
            request = pipe.make_request(prompt, seed=seed, cache=None, image=image, last_image=last, **frames)
            recorder = StepCache(request.steps, record=True)
            context, context_null = pipe.encode_prompts(request.prompt, request.negative_prompt)
            condition = pipe.encode_image(request) if request.image is not None else None
            pipe.denoise(request, context, context_null, step_cache=recorder, image=condition)
            runs.append(recorder.signals)
            if progress is not None:
                kind = " with its image" if image is not None else ""
                progress(f"[calibrate] {counted[0] + len(runs)}/{counted[1]}: {prompt!r}{kind} seed {seed}")
    return runs, request
