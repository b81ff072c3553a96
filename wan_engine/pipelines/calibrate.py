"""`calibrate_pipeline`: uncached runs over a set of prompts, recorded, and the fitted calibration."""
from __future__ import annotations

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
                       progress: Callable[[str], None] | None = None) -> Calibration:
    """Run every prompt x seed uncached with the block stack's residual and the output recorded
    each step, and fit the TeaCache polynomials and MagCache ratios (`cache.fit`). One process.
    A two-expert model records both experts' steps in one run and fits MagCache alone."""
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
    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    runs = []
    request = None
    with torch.inference_mode():
        for prompt in prompts:
            for seed in range(seeds):
                request = pipe.make_request(prompt, size=size, num_frames=num_frames, steps=steps, seed=seed, cache=None)
                recorder = StepCache(request.steps, record=True)
                context, context_null = pipe.encode_prompts(request.prompt, request.negative_prompt)
                pipe.denoise(request, context, context_null, step_cache=recorder)
                runs.append(recorder.signals)
                if progress is not None:
                    progress(f"[calibrate] {len(runs)}/{len(prompts) * seeds}: {prompt!r} seed {seed}")
        timesteps = make_solver(request.solver, request.steps, request.shift).timesteps.to(pipe.device)
        signals = {"plain": timestep_signal(pipe.dit, timesteps, False),
                   "ret_steps": timestep_signal(pipe.dit, timesteps, True)}
    fitted = dict(prompts=len(prompts), seeds=seeds, steps=request.steps, shift=request.shift,
                  size=[request.width, request.height], num_frames=request.num_frames, solver=request.solver,
                  guidance=request.guidance, dtype=str(pipe.dtype).replace("torch.", ""))
    return fit_calibration(runs, signals, pipe.config.name, fitted, policies)
