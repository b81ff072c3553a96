"""Flow-matching schedules and solvers against the official formulas, diffusers, and a closed-form ODE.

diffusers is a test-only oracle here. Its own flow schedules differ from the official Wan2.1 ones
(UniPC: linspace(1, 1/1000) with an eps nudge; DPM++: no custom sigmas and no sigma 1 start), so
every diffusers scheduler is given *our* sigmas (checked bitwise) and the comparison covers the
solver arithmetic itself.
"""

import numpy as np
import pytest
import torch

from wan_engine.reference.schedule import dpm_flow_sigmas, flow_sigmas
from wan_engine.reference.schedulers import (
    SOLVER_NAMES,
    DPMSolverPP,
    EulerSolver,
    FlowSolver,
    UniPCSolver,
    make_solver,
)

STEPS = [1, 2, 10, 50]
SHIFTS = [1, 3, 5, 8]
SHAPE = (1, 4, 3, 6, 6)


# ---------------------------------------------------------------------------------------------
# Schedules: an independent transcription of the official code path, compared bitwise.


def _official_unipc_schedule(steps, shift):
    # FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1) then set_timesteps(steps, shift=shift).
    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    train_sigmas = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    train_sigmas = 1 * train_sigmas / (1 + (1 - 1) * train_sigmas)
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    sig = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sig = shift * sig / (1 + (shift - 1) * sig)
    timesteps = torch.from_numpy(sig * 1000).to(dtype=torch.int64)
    sigmas = torch.from_numpy(np.concatenate([sig, [0]]).astype(np.float32))
    return sigmas, timesteps


def _official_dpm_schedule(steps, shift):
    # get_sampling_sigmas(steps, shift), then set_timesteps(sigmas=...) with the configured shift of 1.
    sig = np.linspace(1, 0, steps + 1)[:steps]
    sig = shift * sig / (1 + (shift - 1) * sig)
    sig = 1 * sig / (1 + (1 - 1) * sig)
    timesteps = torch.from_numpy(sig * 1000).to(dtype=torch.int64)
    sigmas = torch.from_numpy(np.concatenate([sig, [0]]).astype(np.float32))
    return sigmas, timesteps


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize(
    "ours, official", [(flow_sigmas, _official_unipc_schedule), (dpm_flow_sigmas, _official_dpm_schedule)]
)
def test_schedule_is_bitwise_official(steps, shift, ours, official):
    sigmas, timesteps = ours(steps, float(shift))
    want_sigmas, want_timesteps = official(steps, shift)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert timesteps.dtype == torch.int64 and timesteps.shape == (steps,)
    assert torch.equal(sigmas, want_sigmas), (sigmas - want_sigmas).abs().max()
    assert torch.equal(timesteps, want_timesteps), (timesteps, want_timesteps)
    assert sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())


def test_schedule_landmarks():
    sigmas, timesteps = flow_sigmas(50, 1.0)
    assert sigmas[0].item() == float(np.float32(0.999))  # the float32-rounded training sigma
    assert timesteps[0].item() == 999
    sigmas, timesteps = dpm_flow_sigmas(50, 5.0)
    assert sigmas[0].item() == 1.0 and timesteps[0].item() == 1000
    # The float32 rounding of sigma_max is visible in the output, so the bitwise test has teeth.
    base = np.linspace(0.999, 0.0, 51)[:-1]
    naive = (5.0 * base / (1 + 4.0 * base)).astype(np.float32)
    assert not np.array_equal(flow_sigmas(50, 5.0)[0][:-1].numpy(), naive)


# ---------------------------------------------------------------------------------------------
# Solvers against diffusers on a smooth nonlinear velocity field.


def _velocity(x, sigma):
    """A smooth, nonlinear, sigma-dependent field standing in for the DiT."""
    return torch.tanh(x) * (1 + sigma) + 0.3 * torch.sin(3 * x) - sigma * x


def _run_pair(ours, theirs, steps, seed=0):
    """Drive both solvers with identical fields; return the worst per-step relative error."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    a, b = x.clone(), x.clone()
    worst = 0.0
    for i in range(steps):
        sigma = ours.sigmas[i].item()
        a = ours.step(_velocity(a, sigma), i, a)
        b = theirs.step(_velocity(b, sigma), theirs.timesteps[i], b).prev_sample
        assert torch.isfinite(a).all()
        worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
    return worst


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_unipc_matches_diffusers(steps, shift):
    from diffusers import UniPCMultistepScheduler

    ours = make_solver("unipc", steps, shift)
    theirs = UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=1.0, prediction_type="flow_prediction", solver_order=2,
        solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )
    theirs.set_timesteps(sigmas=ours.sigmas[:-1].double().numpy())  # flow_shift 1 leaves them as given
    assert torch.equal(theirs.sigmas, ours.sigmas)
    theirs.set_begin_index(0)
    # fp32 throughout; ours solves the 2x2 corrector system in closed form, so allow a few ulps.
    assert _run_pair(ours, theirs, steps) <= 1e-5


@pytest.mark.parametrize("flow_shift", [1.0, 3.0])
def test_unipc_on_diffusers_own_schedule(flow_shift):
    """Our solver accepts any valid schedule; on diffusers' native flow grid it still agrees."""
    from diffusers import UniPCMultistepScheduler

    theirs = UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=flow_shift, prediction_type="flow_prediction", solver_order=2,
        solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )
    theirs.set_timesteps(13)
    theirs.set_begin_index(0)
    ours = UniPCSolver(theirs.sigmas.clone(), theirs.timesteps.clone())
    assert _run_pair(ours, theirs, 13, seed=3) <= 1e-5


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_dpm_matches_diffusers(steps, shift):
    from diffusers import DPMSolverMultistepScheduler

    ours = make_solver("dpm++", steps, shift)
    theirs = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=1.0, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
    )
    theirs.set_timesteps(steps)
    # DPMSolverMultistepScheduler.set_timesteps takes no custom sigmas and its flow grid omits the
    # official sigma-1 start; install the official schedule on it directly.
    theirs.sigmas, theirs.timesteps = ours.sigmas.clone(), ours.timesteps.clone()
    theirs.set_begin_index(0)
    assert _run_pair(ours, theirs, steps) <= 1e-5


@pytest.mark.parametrize("steps", [1, 4, 17])
def test_euler_matches_diffusers(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ours = make_solver("euler", steps, 5.0)
    theirs = FlowMatchEulerDiscreteScheduler(shift=1.0)
    theirs.set_timesteps(sigmas=ours.sigmas[:-1].double().numpy())
    assert torch.equal(theirs.sigmas, ours.sigmas)
    theirs.set_begin_index(0)
    assert _run_pair(ours, theirs, steps) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Convergence on a probability-flow ODE with a closed-form solution.
#
# Data x0 ~ N(mu, s^2) per element, noise ~ N(0, 1): x_sigma has mean m = (1-sigma) mu and std
# d = sqrt((1-sigma)^2 s^2 + sigma^2), and the exact flow keeps (x - m) / d constant. So
# v(x, sigma) = -mu + d'/d (x - m) with d'/d = (sigma - (1-sigma) s^2) / d^2, and a trajectory
# started at z on sigma0 ends at mu + s * z.


def _gaussian_problem(seed=1):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(SHAPE, generator=g, dtype=torch.float64)
    z = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return mu, s, z


def _solve_gaussian(name, steps, shift):
    mu, s, z = _gaussian_problem()

    def mean_std(sigma):
        return (1 - sigma) * mu, torch.sqrt(((1 - sigma) * s) ** 2 + sigma**2)

    solver = make_solver(name, steps, shift)
    m, d = mean_std(solver.sigmas[0].double())
    x = (m + d * z).float()
    for i in range(steps):
        sigma = solver.sigmas[i].double()
        m, d = mean_std(sigma)
        v = -mu + (sigma - (1 - sigma) * s**2) / d**2 * (x.double() - m)
        x = solver.step(v.float(), i, x)
    return (x.double() - (mu + s * z)).abs().max().item()


def test_unipc_converges_to_exact_ode_solution():
    err = {n: _solve_gaussian("unipc", n, 1.0) for n in (25, 50)}
    euler = {n: _solve_gaussian("euler", n, 1.0) for n in (25, 50)}
    # Measured: unipc 7.4e-3 -> 1.7e-3, euler 0.18 -> 0.089 (max abs error, values of size ~3).
    assert err[50] < 3e-3
    assert err[50] < euler[50] / 20
    assert err[25] / err[50] > 3.0  # second order
    assert 1.6 < euler[25] / euler[50] < 2.5  # Euler: first order, validating the closed form


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_multistep_beats_euler_at_wan_shift(name):
    # Wan2.1 T2V defaults: 50 steps, shift 5. Measured: unipc 0.014, dpm++ 0.027, euler 0.15.
    assert _solve_gaussian(name, 50, 5.0) < _solve_gaussian("euler", 50, 5.0) / 4


# ---------------------------------------------------------------------------------------------
# Dtype handling and per-instance state.


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_low_precision_sample_uses_fp32_arithmetic(name):
    """A bf16 sample comes back bf16, equal to the fp32 solver on the same (upcast) inputs."""
    low, ref = make_solver(name, 6, 3.0), make_solver(name, 6, 3.0)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)).bfloat16()
    for i in range(6):
        v = _velocity(x.float(), low.sigmas[i].item()).bfloat16()
        want = ref.step(v.float(), i, x.float())
        x = low.step(v, i, x)
        assert x.dtype == torch.bfloat16
        assert torch.equal(x, want.bfloat16())


def test_solvers_keep_state_per_instance():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    alone = make_solver("unipc", 5, 5.0)
    a = x.clone()
    for i in range(5):
        a = alone.step(_velocity(a, alone.sigmas[i].item()), i, a)
    first, second = make_solver("unipc", 5, 5.0), make_solver("unipc", 5, 5.0)
    b, c = x.clone(), -x
    for i in range(5):  # interleaved with a different trajectory
        b = first.step(_velocity(b, first.sigmas[i].item()), i, b)
        c = second.step(_velocity(c, second.sigmas[i].item()), i, c)
    assert torch.equal(a, b)


def test_make_solver_returns_the_right_kinds():
    assert isinstance(make_solver("unipc", 3, 5.0), UniPCSolver)
    assert isinstance(make_solver("dpm++", 3, 5.0), DPMSolverPP)
    assert isinstance(make_solver("euler", 3, 5.0), EulerSolver)
    s = make_solver("dpm++", 4, 3.0)
    want_sigmas, want_timesteps = dpm_flow_sigmas(4, 3.0)
    assert torch.equal(s.sigmas, want_sigmas) and torch.equal(s.timesteps, want_timesteps)


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(steps, 5.0)
    with pytest.raises(ValueError, match="steps"):
        make_solver("unipc", steps, 5.0)


@pytest.mark.parametrize("shift", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        dpm_flow_sigmas(10, shift)


def test_unknown_solver_lists_choices():
    with pytest.raises(ValueError, match=r"unipc.*dpm\+\+.*euler"):
        make_solver("ddim", 10, 5.0)


def test_steps_must_be_taken_in_order():
    solver = make_solver("unipc", 2, 5.0)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="expected 0"):
        solver.step(x, 1, x)
    x = solver.step(x, 0, x)
    with pytest.raises(ValueError, match="expected 1"):
        solver.step(x, 0, x)
    x = solver.step(x, 1, x)
    with pytest.raises(ValueError, match="all steps taken"):
        solver.step(x, 2, x)


def test_shape_mismatch_and_bad_schedule():
    solver = make_solver("euler", 2, 5.0)
    with pytest.raises(ValueError, match="shape"):
        solver.step(torch.zeros(1, 4, 3, 6, 5), 0, torch.zeros(SHAPE))
    ts = torch.tensor([900, 500])
    with pytest.raises(ValueError, match="decreasing"):
        FlowSolver(torch.tensor([0.5, 0.9, 0.0]), ts)
    with pytest.raises(ValueError, match="end with 0"):
        FlowSolver(torch.tensor([0.9, 0.5, 0.1]), ts)
    with pytest.raises(ValueError, match="float32"):
        FlowSolver(torch.tensor([0.9, 0.5, 0.0], dtype=torch.float64), ts)
