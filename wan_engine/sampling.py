"""Named sampling presets, and the few-step solvers of the step-distilled Wan2.1 and Wan2.2 models.

`distill-4step` is LightX2V's setting for its 4-step CFG-free distill LoRAs and models
(ModelTC/LightX2V `configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json`, used with
`lightx2v/Wan2.1-Distill-Loras/wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors`):
`infer_steps` 4, `denoising_step_list` [1000, 750, 500, 250], `sample_shift` 5, `enable_cfg` false
(its `sample_guide_scale` 6 is then unused). Their solver (`WanStepDistillScheduler`,
lightx2v/models/schedulers/wan/step_distill/scheduler.py) is reproduced by `DistillSolver`:

    sigmas    = shift(linspace(1, 0, 1001)[:-1])          float32, shift s*x / (1 + (s-1)*x)
    step i    at sigmas[1000 - denoising_step_list[i]], timestep = that sigma * 1000 (a float)
    x0        = x - sigma_i * v
    x         = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * noise   (fresh Gaussian noise; the last step returns x0)

Not reproduced: LightX2V draws that noise from the generator that drew the initial latents; here
a generator seeded with seed + 1 draws it, so a video is not noise-for-noise LightX2V's.

`distill-4step-a14b` is LightX2V's setting for the Wan2.2 T2V-A14B 4-step distill LoRAs (one per
expert; `configs/wan22/wan_moe_t2v_distill_lora.json`, with
`lightx2v/Wan2.2-Distill-Loras/wan2.2_t2v_A14b_{high,low}_noise_lora_rank64_lightx2v_4step_1217.safetensors`):
the same 4 timesteps and shift 5 without CFG, and their Wan2.2 solver (`Wan22StepDistillScheduler`),
which draws no noise: `x = (x - sigma_i * v) + sigma_{i+1} * v`, an Euler step (the last returns x0).
Their `boundary_step_index` 2 (the high-noise expert for the first two steps) is where the
timestep boundary 0.875 falls on these timesteps (1000, 937.5 | 833.3, 625), so the engine's
boundary rule switches at the same step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference.schedulers import make_solver
from .validation import SEED_BOUND

DISTILL_SOLVER = "distill"  # Wan2.1's: fresh noise between steps
DISTILL_EULER_SOLVER = "distill-euler"  # Wan2.2's: deterministic
DISTILL_SOLVERS = (DISTILL_SOLVER, DISTILL_EULER_SOLVER)


@dataclass(frozen=True)
class SamplingPreset:
    name: str
    steps: int
    shift: float
    solver: str
    cfg: bool
    denoising_steps: tuple[int, ...] | None = None  # the distill solver's training timesteps
    source: str = ""


SAMPLING_PRESETS = {
    "distill-4step": SamplingPreset(
        "distill-4step", steps=4, shift=5.0, solver=DISTILL_SOLVER, cfg=False, denoising_steps=(1000, 750, 500, 250),
        source="ModelTC/LightX2V configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json"),
    "distill-4step-a14b": SamplingPreset(
        "distill-4step-a14b", steps=4, shift=5.0, solver=DISTILL_EULER_SOLVER, cfg=False,
        denoising_steps=(1000, 750, 500, 250), source="ModelTC/LightX2V configs/wan22/wan_moe_t2v_distill_lora.json"),
}


def get_sampling_preset(name: str) -> SamplingPreset:
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING_PRESETS)}; got {name!r}")
    return SAMPLING_PRESETS[name]


class DistillSolver:
    """LightX2V's step-distill samplers (see the module docstring); the runner's solver interface:
    `timesteps` [steps] (float32, CPU), `sigmas` [steps + 1], `num_steps`, `step(v, i, x)`.
    `renoise` True: Wan2.1's (fresh noise between steps); False: Wan2.2's (an Euler step)."""

    def __init__(self, denoising_steps: tuple[int, ...], shift: float, seed: int, device="cpu", renoise: bool = True):
        if not denoising_steps or any(not 0 < t <= 1000 for t in denoising_steps) or list(denoising_steps) != sorted(
                denoising_steps, reverse=True):
            raise ValueError(f"denoising_steps must be decreasing integers in (0, 1000], got {denoising_steps}")
        grid = torch.linspace(1.0, 0.0, 1001)[:-1]
        grid = shift * grid / (1 + (shift - 1) * grid)
        index = [1000 - t for t in denoising_steps]
        self.sigmas = torch.cat([grid[index], torch.zeros(1)])
        self.timesteps = grid[index] * 1000
        self.renoise = renoise
        self.name = DISTILL_SOLVER if renoise else DISTILL_EULER_SOLVER
        self.generator = torch.Generator(device=device).manual_seed((seed + 1) % SEED_BOUND) if renoise else None
        self._next = 0

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def step(self, velocity: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        if i != self._next or i >= self.num_steps:
            raise ValueError(f"i must be the next step index (expected {self._next}), got {i!r}")
        self._next += 1
        sigma, sigma_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        v = velocity.float()
        x0 = sample.float() - sigma * v
        if i < self.num_steps - 1 and self.renoise:
            noise = torch.randn(x0.shape, generator=self.generator, device=x0.device, dtype=torch.float32)
            x0 = (1 - sigma_next) * x0 + sigma_next * noise
        elif i < self.num_steps - 1:
            x0 = x0 + sigma_next * v
        return x0.to(sample.dtype)


def make_sampling_solver(solver: str, steps: int, shift: float, seed: int, device="cpu",
                         denoising_steps: tuple[int, ...] | None = None):
    """The official solvers by name (`reference.schedulers.make_solver`), or a distill solver
    (its timesteps `denoising_steps`, default the distill presets', must count `steps`)."""
    if solver not in DISTILL_SOLVERS:
        return make_solver(solver, steps, shift)
    denoising_steps = SAMPLING_PRESETS["distill-4step"].denoising_steps if denoising_steps is None else denoising_steps
    if steps != len(denoising_steps):
        raise ValueError(f"steps must be {len(denoising_steps)} with the distill solver (its timesteps "
                         f"{list(denoising_steps)}); got {steps}")
    return DistillSolver(tuple(denoising_steps), shift, seed, device, renoise=solver == DISTILL_SOLVER)
