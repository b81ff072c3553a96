"""The denoising loop: classifier-free guidance around a DiT and a flow solver.

With the optimized executor, the text K/V of both prompts are prepared once per request and the
two CFG branches run as one batch-2 forward (or, with cfg_batch=False, as two forwards). The
reference DiT is called as the official code calls it: once per branch, context every time.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from .executor import WanExecutor
from .reference.dit import pad_context

# velocity(latents [B, C, F, H, W], timestep [B]) -> guided fp32 velocity [B, C, F, H, W]
GuidedVelocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    # Formed exactly as the official code does, so guidance 1 still mixes both branches.
    return v_uncond + guidance * (v_cond - v_uncond)


def make_guided_velocity(dit, context: torch.Tensor, context_null: torch.Tensor, guidance: float,
                         cfg_batch: bool | None = None) -> GuidedVelocity:
    """The CFG step function `u + g * (c - u)` for one request.

    dit: a WanExecutor (fast path) or any callable `dit(x, t, context)` such as the reference.
    context, context_null: [B, L, text_dim] embeddings of the prompt and the negative prompt.
    cfg_batch: executor only; None takes `dit.engine_config.cfg_batch`. True stacks cond and
    uncond into one batch-2B forward (latents repeated, text K/V of both prompts stacked).
    """
    if not isinstance(dit, WanExecutor):
        def reference_velocity(latents, timestep):
            return _guide(dit(latents, timestep, context).float(), dit(latents, timestep, context_null).float(),
                          guidance)
        return reference_velocity

    cfg_batch = dit.engine_config.cfg_batch if cfg_batch is None else cfg_batch
    if not cfg_batch:
        text_cond, text_uncond = dit.prepare_text(context), dit.prepare_text(context_null)

        def separate_velocity(latents, timestep):
            return _guide(dit.predict(latents, timestep, text_cond), dit.predict(latents, timestep, text_uncond),
                          guidance)
        return separate_velocity

    # Both prompts' K/V from one batched preparation (the DiT pads each context to text_len anyway).
    text_len = dit.config.text_len
    text_both = dit.prepare_text(torch.cat([pad_context(context, text_len), pad_context(context_null, text_len)]))

    def batched_velocity(latents, timestep):
        v_cond, v_uncond = dit.predict(torch.cat([latents, latents]), torch.cat([timestep, timestep]),
                                       text_both).chunk(2)
        return _guide(v_cond, v_uncond, guidance)

    return batched_velocity


def cfg_denoise(dit, latents: torch.Tensor, context: torch.Tensor, context_null: torch.Tensor, solver,
                guidance: float, progress: bool = False, cfg_batch: bool | None = None) -> torch.Tensor:
    """Run every solver step on `latents [B, C, F, H, W]`; returns the final fp32 latents.

    The text K/V preparation (executor) happens once here, before the first step.
    """
    velocity = make_guided_velocity(dit, context, context_null, guidance, cfg_batch)
    steps = tqdm(solver.timesteps, desc="denoising", disable=not progress, leave=False)
    for i, t in enumerate(steps):
        timestep = t.reshape(1).expand(latents.shape[0]).to(latents.device)
        latents = solver.step(velocity(latents, timestep), i, latents)
    return latents
