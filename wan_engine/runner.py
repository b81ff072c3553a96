"""The denoising loop: classifier-free guidance around a DiT callable and a flow solver."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm


def cfg_denoise(dit, latents: torch.Tensor, context: torch.Tensor, context_null: torch.Tensor, solver,
                guidance: float, progress: bool = False) -> torch.Tensor:
    """Run every solver step on `latents [1, C, F, H, W]`; returns the final fp32 latents.

    The guided velocity is `u + g * (c - u)` exactly as the official code forms it, so a guidance
    of 1 still evaluates both branches (the result differs from `c` by rounding only).
    """
    steps = tqdm(solver.timesteps, desc="denoising", disable=not progress, leave=False)
    for i, t in enumerate(steps):
        timestep = t.reshape(1).to(latents.device)
        v_cond = dit(latents, timestep, context).float()
        v_uncond = dit(latents, timestep, context_null).float()
        velocity = v_uncond + guidance * (v_cond - v_uncond)
        latents = solver.step(velocity, i, latents)
    return latents
