"""Flow-matching ODE solvers: official flow UniPC (the Wan2.1 default), flow DPM++ 2M, and Euler.

One solver instance drives one generation: it owns the schedule and the history a multistep
method needs, so nothing is shared between calls. The pipeline loop is

    solver = make_solver("unipc", steps=50, shift=5.0)
    for i, t in enumerate(solver.timesteps):
        v = model(x, t)                  # flow velocity, v = noise - x0
        x = solver.step(v, i, x)

Flow convention (see `schedule.py`): x_sigma = (1 - sigma) * x0 + sigma * noise, so alpha = 1 - sigma,
the data prediction is x0 = x - sigma * v, and the exponential integrators work in
lambda = log(alpha) - log(sigma). As in the official code, solver arithmetic runs in float32 with
float32 scalar coefficients; `step` returns the sample's dtype while the history stays float32.
"""
from __future__ import annotations

import torch

from wan_engine.reference.schedule import dpm_flow_sigmas, flow_sigmas

SOLVER_NAMES = ("unipc", "dpm++", "euler")


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma) for alpha = 1 - sigma; -inf at sigma 1, +inf at sigma 0."""
    return torch.log(1 - sigma) - torch.log(sigma)


class FlowSolver:
    """Common schedule holder and call checking; subclasses implement `_step` in float32.

    Attributes:
        sigmas: float32 [steps + 1] (CPU), decreasing from <= 1 to exactly 0.
        timesteps: int64 [steps] (CPU), the model's time input for each step.
    """

    name = "base"

    def __init__(self, sigmas: torch.Tensor, timesteps: torch.Tensor):
        if sigmas.dtype != torch.float32 or sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError(
                f"sigmas must be a 1-D float32 tensor of length >= 2, got {sigmas.dtype} {tuple(sigmas.shape)}"
            )
        if timesteps.dtype != torch.int64 or tuple(timesteps.shape) != (sigmas.numel() - 1,):
            raise ValueError(
                f"timesteps must be int64 of shape ({sigmas.numel() - 1},), "
                f"got {timesteps.dtype} {tuple(timesteps.shape)}"
            )
        sigmas = sigmas.detach().to("cpu").clone()
        if not bool(torch.isfinite(sigmas).all()) or sigmas[0] > 1 or sigmas[-1] != 0:
            raise ValueError(f"sigmas must be finite, in [0, 1], and end with 0; got {sigmas.tolist()}")
        if not bool((sigmas[1:] < sigmas[:-1]).all()):
            raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
        self.sigmas = sigmas
        self.timesteps = timesteps.detach().to("cpu").clone()
        self._next_index = 0

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def step(self, velocity: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """Advance the sample from sigmas[i] to sigmas[i + 1].

        Args:
            velocity: model output at (sample, timesteps[i]), any float dtype, same shape as sample.
            i: step index; steps must be taken in order 0, 1, ..., steps - 1, each once.
            sample: current latent x at sigmas[i], e.g. [B, C, F, H, W].
        Returns:
            the next sample, same shape and dtype as `sample`.
        """
        done = self._next_index >= self.num_steps
        if isinstance(i, bool) or not isinstance(i, int) or i != self._next_index or done:
            expect = "none (all steps taken)" if done else self._next_index
            raise ValueError(
                f"i must be the next step index in 0..{self.num_steps - 1}, taken in order; "
                f"expected {expect}, got {i!r}"
            )
        if velocity.shape != sample.shape:
            raise ValueError(
                f"velocity shape {tuple(velocity.shape)} must equal sample shape {tuple(sample.shape)}"
            )
        if not (velocity.is_floating_point() and sample.is_floating_point()):
            raise ValueError(
                f"velocity and sample must be floating point, got {velocity.dtype} and {sample.dtype}"
            )
        out = self._step(velocity.float(), i, sample.float())
        self._next_index += 1
        return out.to(sample.dtype)

    def _step(self, velocity: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EulerSolver(FlowSolver):
    """First-order Euler in sigma: x' = x + (sigma_{i+1} - sigma_i) * v."""

    name = "euler"

    def _step(self, velocity, i, sample):
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return sample + dt * velocity


class DPMSolverPP(FlowSolver):
    """Multistep DPM-Solver++ of order 2 (midpoint form), official Wan2.1 flow defaults.

    Step i is first order when i == 0 (no history) and at the final step (the official
    final_sigmas_type "zero" forces it, which lands exactly on x0); second order otherwise.
    With sigmas[0] == 1 (the official DPM++ schedule) lambda_0 is -inf: the first step reduces to
    x' = sigma_1 * x + alpha_1 * x0, and the second step's correction term vanishes (r0 = inf), exactly
    as in the official implementation.
    """

    name = "dpm++"

    def __init__(self, sigmas, timesteps):
        super().__init__(sigmas, timesteps)
        self._prev_x0: torch.Tensor | None = None

    def _step(self, velocity, i, sample):
        sigma_s0, sigma_t = self.sigmas[i], self.sigmas[i + 1]
        x0 = sample - sigma_s0 * velocity
        lambda_s0, lambda_t = _log_snr(sigma_s0), _log_snr(sigma_t)
        h = lambda_t - lambda_s0
        # exp(-h) - 1 rather than expm1: the official form, kept for matching numerics.
        coef_x0 = (1 - sigma_t) * (torch.exp(-h) - 1.0)
        x_next = (sigma_t / sigma_s0) * sample - coef_x0 * x0
        if 0 < i < self.num_steps - 1:
            r0 = (lambda_s0 - _log_snr(self.sigmas[i - 1])) / h
            d1 = (1.0 / r0) * (x0 - self._prev_x0)
            x_next = x_next - 0.5 * coef_x0 * d1
        self._prev_x0 = x0
        return x_next


class UniPCSolver(FlowSolver):
    """Flow UniPC, B(h) = expm1(-h) ("bh2"), order 2, predicting x0; the Wan2.1 default sampler.

    Each step i first corrects the incoming sample with UniC (i > 0), using the new data prediction,
    then predicts the next sample with UniP from the corrected one. Orders follow the official
    warm-up and lower_order_final rules: UniP uses order min(2, i + 1, steps - i) (so order 1 at the
    first and last step) and UniC at step i reuses the order of UniP at step i - 1. The corrector is
    never disabled. As in the official code, the data prediction x0 is taken from the sample
    *before* correction.
    """

    name = "unipc"

    def __init__(self, sigmas, timesteps):
        super().__init__(sigmas, timesteps)
        self._x0_history: list[torch.Tensor] = []  # data predictions of the last two steps, newest last
        self._last_sample: torch.Tensor | None = None  # the (corrected) sample UniP last started from
        self._last_order = 0

    def _step(self, velocity, i, sample):
        x0 = sample - self.sigmas[i] * velocity
        if i > 0:
            sample = self._correct(x0, i, sample)
        order = min(2, i + 1, self.num_steps - i)
        self._x0_history = (self._x0_history + [x0])[-2:]
        self._last_sample = sample
        self._last_order = order
        return self._predict(i, sample, order)

    def _exp_terms(self, s_from: int, s_to: int):
        """Scalars of the exponential integrator from sigmas[s_from] to sigmas[s_to] (float32, 0-d)."""
        sigma_s0, sigma_t = self.sigmas[s_from], self.sigmas[s_to]
        lambda_s0 = _log_snr(sigma_s0)
        h = _log_snr(sigma_t) - lambda_s0
        hh = -h  # predicting x0, the integrator runs in -lambda
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)  # bh2
        return sigma_s0, sigma_t, lambda_s0, h, hh, h_phi_1, b_h

    def _predict(self, i, x, order):
        """UniP from sigmas[i] to sigmas[i + 1]; x is the corrected sample at sigmas[i]."""
        sigma_s0, sigma_t, lambda_s0, h, _, h_phi_1, b_h = self._exp_terms(i, i + 1)
        alpha_t = 1 - sigma_t
        m0 = self._x0_history[-1]
        x_next = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if order == 2:
            rk = (_log_snr(self.sigmas[i - 1]) - lambda_s0) / h
            d1 = (self._x0_history[-2] - m0) / rk
            # The official order-2 predictor uses the fixed weight 1/2 instead of solving for it.
            x_next = x_next - alpha_t * b_h * (0.5 * d1)
        return x_next

    def _correct(self, x0_now, i, x_now):
        """UniC: redo the step sigmas[i-1] -> sigmas[i] from the last sample, now knowing x0 at sigmas[i]."""
        order = self._last_order
        sigma_s0, sigma_t, lambda_s0, h, hh, h_phi_1, b_h = self._exp_terms(i - 1, i)
        alpha_t = 1 - sigma_t
        m0 = self._x0_history[-1]
        x_base = sigma_t / sigma_s0 * self._last_sample - alpha_t * h_phi_1 * m0
        d1_t = x0_now - m0
        if order == 1:
            return x_base - alpha_t * b_h * (0.5 * d1_t)
        # Order 2: weights rho solve [[1, 1], [rk, 1]] rho = [b1, b2] with
        # b_k = k! * phi_{k+1}(hh) / B(h); written in closed form (the official uses linalg.solve).
        h_phi_k = h_phi_1 / hh - 1
        b1 = h_phi_k / b_h
        b2 = (h_phi_k / hh - 0.5) * 2 / b_h
        rk = (_log_snr(self.sigmas[i - 2]) - lambda_s0) / h
        rho_0 = (b1 - b2) / (1 - rk)
        rho_1 = b1 - rho_0
        d1 = (self._x0_history[-2] - m0) / rk
        return x_base - alpha_t * b_h * (rho_0 * d1 + rho_1 * d1_t)


_SOLVERS = {
    "unipc": (flow_sigmas, UniPCSolver),
    "dpm++": (dpm_flow_sigmas, DPMSolverPP),
    "euler": (flow_sigmas, EulerSolver),
}


def make_solver(name: str, steps: int, shift: float) -> FlowSolver:
    """A fresh solver with the official schedule for `name`.

    Args:
        name: one of "unipc" (official default), "dpm++" (official schedule starting at sigma 1),
            "euler" (on the UniPC schedule; not an official Wan2.1 option).
        steps: number of denoising steps, >= 1.
        shift: timestep shift > 0.
    """
    if name not in _SOLVERS:
        raise ValueError(f"name must be one of {SOLVER_NAMES}, got {name!r}")
    schedule, solver_cls = _SOLVERS[name]
    sigmas, timesteps = schedule(steps, shift)
    return solver_cls(sigmas, timesteps)
