"""The denoising loop: classifier-free guidance around a DiT and a flow solver.

With the optimized executor, the text K/V of both prompts are prepared once per request and the
two CFG branches run as one batch-2 forward (or, with cfg_batch=False, as two forwards). The
reference DiT is called as the official code calls it: once per branch, context every time.

CFG parallelism (a mesh with cfg=2): each rank runs only its own branch (batch B) and the two
velocities meet once per step in `cfg_combine`, which forms the same `u + g * (c - u)` in fp32;
every rank then holds the guided velocity and steps its solver in lockstep with the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .cache import StepCache
from .executor import WanExecutor
from .executor.steps import StepFunctions, text_tensors
from .graphs import GraphReplayer
from .parallel.cfg_parallel import COND_BRANCH, UNCOND_BRANCH, branch_context, cfg_branch, cfg_combine
from .parallel.mesh import ParallelMesh
from .reference.dit import pad_context

# velocity(latents [B, C, F, H, W], timestep [B], step index (needed with a step cache)) -> guided fp32 velocity [B, C, F, H, W]
GuidedVelocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class ImageInputs:
    """The i2v/flf2v conditioning of one request, the same for both CFG branches (as official):
    clip_fea [B, T, image_dim] (None for a model without CLIP, Wan2.2 I2V-A14B) and
    y [B, C_y, F, H, W], concatenated to the latents on channels."""

    clip_fea: torch.Tensor | None
    y: torch.Tensor

    def doubled(self) -> "ImageInputs":
        """Both branches stacked (the batched CFG forward)."""
        clip = None if self.clip_fea is None else torch.cat([self.clip_fea, self.clip_fea])
        return ImageInputs(clip, torch.cat([self.y, self.y]))


@dataclass(frozen=True)
class FirstFrame:
    """Wan2.2 TI2V's image-to-video conditioning of one request: the image's normalized latents
    [B, C, 1, h, w] stand in for latent frame 0 before the first step and after every step, and
    frame 0's tokens run at timestep 0 while the rest run at the step's (the official
    `textimage2video.py` i2v: `(1 - mask) * z + mask * latent`, per-token `mask * t`)."""

    latents: torch.Tensor

    def applied(self, latents: torch.Tensor) -> torch.Tensor:
        """`latents` with frame 0 replaced (a new tensor: the solver may keep the old one)."""
        return torch.cat([self.latents.to(latents.dtype).expand(latents.shape[0], -1, -1, -1, -1),
                          latents[:, :, 1:]], dim=2)

    @staticmethod
    def timesteps(t: torch.Tensor) -> torch.Tensor:
        """t [B] -> [B, 2]: (frame 0's tokens at 0, the rest at t), the DiTs' two-timestep form."""
        return torch.stack([torch.zeros_like(t), t], dim=1)


def _guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    # Formed exactly as the official code does, so guidance 1 still mixes both branches.
    return v_uncond + guidance * (v_cond - v_uncond)


def make_guided_velocity(dit, context: torch.Tensor, context_null: torch.Tensor, guidance: float,
                         cfg_batch: bool | None = None, mesh: ParallelMesh | None = None,
                         step_cache: StepCache | None = None, graphs: GraphReplayer | None = None,
                         cfg: bool = True, image: ImageInputs | None = None) -> GuidedVelocity:
    """The CFG step function `u + g * (c - u)` for one request.

    dit: a WanExecutor (fast path) or any callable `dit(x, t, context)` such as the reference.
    context, context_null: [B, L, text_dim] embeddings of the prompt and the negative prompt.
    cfg_batch: executor only; None takes `dit.engine_config.cfg_batch`. True stacks cond and
    uncond into one batch-2B forward (latents repeated, text K/V of both prompts stacked).
    mesh: with cfg=2, this rank computes only its branch (cfg_batch is moot) and the returned
    function is collective over the mesh's cfg group: both branch ranks must call it every step.
    step_cache: executor only; runs the block stack or reuses its residual per step and branch.
    graphs: executor only; replays each fixed-shape step as a CUDA graph (eager where inactive).
    cfg: False runs the conditional branch alone, one forward per step (for CFG-distilled models;
    explicit, since guidance 1 is `u + 1 * (c - u)`, not bitwise `c`); `guidance` is then unused.
    image: the i2v/flf2v conditioning (CLIP features and y), batch B like the latents; None for t2v.
    """
    if mesh is not None and not isinstance(mesh, ParallelMesh):
        raise ValueError(f"mesh must be a ParallelMesh or None, got {type(mesh).__name__}")
    if step_cache is not None and not takes_prepared_text(dit):
        raise ValueError("step caching needs the executor engine (the reference runs every step)")
    predict = _predictor(step_cache, graphs if isinstance(dit, WanExecutor) else None)
    if not cfg:
        return _conditional_velocity(dit, context, mesh, predict, image)
    if mesh is not None and mesh.cfg_size == 2:
        return _cfg_parallel_velocity(dit, branch_context(mesh, context, context_null), guidance, mesh, predict,
                                      image)
    clip, y = (None, None) if image is None else (image.clip_fea, image.y)

    if not takes_prepared_text(dit):
        extra = _reference_image_args(image)

        def reference_velocity(latents, timestep, step=None):
            return _guide(dit(latents, timestep, context, **extra).float(),
                          dit(latents, timestep, context_null, **extra).float(), guidance)
        return reference_velocity

    cfg_batch = dit.engine_config.cfg_batch if cfg_batch is None else cfg_batch
    if not cfg_batch:
        text_cond, text_uncond = dit.prepare_text(context, clip), dit.prepare_text(context_null, clip)

        def separate_velocity(latents, timestep, step=None):
            return _guide(predict(dit, latents, timestep, text_cond, (COND_BRANCH,), step, y),
                          predict(dit, latents, timestep, text_uncond, (UNCOND_BRANCH,), step, y), guidance)
        return separate_velocity

    # Both prompts' K/V from one batched preparation (the DiT pads each context to text_len anyway).
    text_len = dit.config.text_len
    both = None if image is None else image.doubled()
    text_both = dit.prepare_text(torch.cat([pad_context(context, text_len), pad_context(context_null, text_len)]),
                                 None if both is None else both.clip_fea)
    y_both = None if both is None else both.y

    def batched_velocity(latents, timestep, step=None):
        v_cond, v_uncond = predict(dit, torch.cat([latents, latents]), torch.cat([timestep, timestep]), text_both,
                                   (COND_BRANCH, UNCOND_BRANCH), step, y_both).chunk(2)
        return _guide(v_cond, v_uncond, guidance)

    return batched_velocity


def takes_prepared_text(dit) -> bool:
    """The executor, or a DiT exported from it (ONNX, TensorRT): text K/V prepared once per request,
    `predict(x, t, text)` every step. Anything else is called like the reference, `dit(x, t, context)`."""
    return isinstance(dit, WanExecutor) or (hasattr(dit, "prepare_text") and hasattr(dit, "predict"))


def _conditional_velocity(dit, context: torch.Tensor, mesh: ParallelMesh | None, predict,
                          image: ImageInputs | None) -> GuidedVelocity:
    """The conditional branch alone: one forward per step, no negative prompt."""
    if mesh is not None and mesh.cfg_size == 2:
        raise ValueError("cfg=False runs one branch; CFG parallelism (cfg=2) needs two: drop --cfg-parallel")
    clip, y = (None, None) if image is None else (image.clip_fea, image.y)
    if not takes_prepared_text(dit):
        extra = _reference_image_args(image)

        def reference_conditional(latents, timestep, step=None):
            return dit(latents, timestep, context, **extra).float()
        return reference_conditional
    text = dit.prepare_text(context, clip)

    def conditional_velocity(latents, timestep, step=None):
        return predict(dit, latents, timestep, text, (COND_BRANCH,), step, y)
    return conditional_velocity


def _reference_image_args(image: ImageInputs | None) -> dict:
    """The reference-style call's image keywords: none for t2v, so that any `dit(x, t, context)`
    callable still works there."""
    return {} if image is None else dict(clip_fea=image.clip_fea, y=image.y)


def _predictor(step_cache: StepCache | None, graphs: GraphReplayer | None):
    """predict(dit, x, t, text, branches, step, y): the plain executor call, its CUDA-graph replay,
    or the cached one (which replays graphs itself where it can); y: i2v/flf2v conditioning or None."""
    if step_cache is not None:
        return step_cache.predict
    if graphs is None or not graphs.active:
        def predict(dit, x, t, text, branches, step, y=None):
            return dit.predict(x, t, text, y=y)
        return predict

    def graphed_predict(dit, x, t, text, branches, step, y=None):
        patches, rope = dit.tokens_in(x, t, y=y)
        fns = StepFunctions(dit, rope, text)
        out = graphs.call(fns.key("full", patches, text), fns.full, patches, t, rope.cos, rope.sin, *text_tensors(text))
        return dit.tokens_out(out, rope)
    return graphed_predict


def _cfg_parallel_velocity(dit, own_context: torch.Tensor, guidance: float, mesh: ParallelMesh,
                           predict, image: ImageInputs | None) -> GuidedVelocity:
    """One branch on this rank (its own prompt's K/V prepared once), combined across the cfg group."""
    clip, y = (None, None) if image is None else (image.clip_fea, image.y)
    if takes_prepared_text(dit):
        text = dit.prepare_text(own_context, clip)
        own = (cfg_branch(mesh),)

        def branch(latents, timestep, step=None):
            return predict(dit, latents, timestep, text, own, step, y)
    else:
        extra = _reference_image_args(image)

        def branch(latents, timestep, step=None):
            return dit(latents, timestep, own_context, **extra)

    def cfg_parallel_velocity(latents, timestep, step=None):
        return cfg_combine(branch(latents, timestep, step), mesh, guidance)

    return cfg_parallel_velocity


def cfg_denoise(dit, latents: torch.Tensor, context: torch.Tensor, context_null: torch.Tensor, solver,
                guidance: float, progress: bool = False, cfg_batch: bool | None = None,
                mesh: ParallelMesh | None = None, step_cache: StepCache | None = None,
                graphs: GraphReplayer | None = None, *,
                on_step: Callable[[int, int], None] | None = None, cfg: bool = True,
                image: ImageInputs | FirstFrame | None = None, steps: range | None = None) -> torch.Tensor:
    """Run every solver step on `latents [B, C, F, H, W]`; returns the final fp32 latents.

    The text K/V preparation (executor) happens once here, before the first step. With a
    parallel `mesh`, every rank of it runs this with the same inputs and gets the same latents.
    `step_cache` (built for this request's steps) decides which steps run the block stack.
    `on_step(done, total)` runs after each step (progress; it may raise to stop between steps).
    Under a parallel mesh it runs on every rank, so a callback that stops must stop every rank alike.
    `image`: the i2v/flf2v conditioning (`ImageInputs`), a TI2V first frame (`FirstFrame`), or None.
    `steps`: the solver steps to run (default all of them): a two-expert model runs its experts on
    two consecutive ranges of one solver, which carries its multistep history across the switch.
    """
    if step_cache is not None and step_cache.steps != solver.num_steps:
        raise ValueError(f"the step cache was built for {step_cache.steps} steps, the solver has {solver.num_steps}")
    first = image if isinstance(image, FirstFrame) else None
    if first is not None:
        image = None
        latents = first.applied(latents)
    velocity = make_guided_velocity(dit, context, context_null, guidance, cfg_batch, mesh, step_cache, graphs, cfg,
                                    image)
    # One host-to-device copy for the whole schedule: a pageable copy per step would make the
    # host wait for the previous step's GPU work every step (the solver's CPU sigmas enter as
    # scalars and cost nothing).
    timesteps = solver.timesteps.to(latents.device)
    steps = range(solver.num_steps) if steps is None else steps
    if steps.step != 1 or not 0 <= steps.start <= steps.stop <= solver.num_steps:
        raise ValueError(f"steps must be a consecutive range within the solver's {solver.num_steps} steps, got {steps}")
    for i in tqdm(steps, desc="denoising", disable=not progress, leave=False):
        timestep = timesteps[i].reshape(1).expand(latents.shape[0])
        if first is not None:
            timestep = first.timesteps(timestep)
        latents = solver.step(velocity(latents, timestep, i), i, latents)
        if first is not None:
            latents = first.applied(latents)
        if on_step is not None:
            on_step(i + 1, solver.num_steps)
    return latents
