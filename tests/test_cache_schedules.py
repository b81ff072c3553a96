"""The skip schedules against independent transcriptions of the published decision rules.

The transcriptions below follow the official code's shape on purpose: one stateful object per
model, called once per DiT forward (conditional on even calls, unconditional on odd ones), with
the call counter, the per-parity accumulators and the previous signal as attributes. The engine's
schedules are pure functions over steps; agreeing call for call is the check.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_engine.cache.published import MAGCACHE_IMAGE_RATIOS, MAGCACHE_RATIOS, TEACACHE_COEFFICIENTS
from wan_engine.cache.schedules import magcache_schedule, nearest_interp, teacache_schedule
from wan_engine.configs import get_preset
from wan_engine.reference.dit import sinusoidal_embedding_1d
from wan_engine.reference.schedulers import make_solver


class OfficialTeaCache:
    """TeaCache4Wan2.1's per-call rule (teacache_generate.py, `teacache_forward`)."""

    def __init__(self, steps, threshold, coefficients, use_ret_steps):
        self.cnt, self.num_steps, self.thresh, self.coefficients = 0, 2 * steps, threshold, coefficients
        self.ret_steps = 5 * 2 if use_ret_steps else 1 * 2
        self.cutoff_steps = 2 * steps if use_ret_steps else 2 * steps - 2
        self.acc = {0: 0.0, 1: 0.0}
        self.prev = {0: None, 1: None}

    def __call__(self, modulated_inp: torch.Tensor) -> bool:
        parity = self.cnt % 2
        if self.cnt < self.ret_steps or self.cnt >= self.cutoff_steps:
            calc = True
            self.acc[parity] = 0
        else:
            rescale = np.poly1d(self.coefficients)
            prev = self.prev[parity]
            self.acc[parity] += rescale(((modulated_inp - prev).abs().mean() / prev.abs().mean()).cpu().item())
            if self.acc[parity] < self.thresh:
                calc = False
            else:
                calc = True
                self.acc[parity] = 0
        self.prev[parity] = modulated_inp.clone()
        self.cnt += 1
        if self.cnt >= self.num_steps:
            self.cnt = 0
        return calc


class OfficialMagCache:
    """MagCache4Wan2.1's per-call rule (magcache_generate.py, `magcache_forward`), with its
    `nearest_interp` when the step count differs from the calibration's. One change: a branch's
    first call computes without touching the accumulators (where the official reaches it past the
    retention steps, it would add its still empty residual cache)."""

    def __init__(self, steps, threshold, K, retention_ratio, mag_ratios):
        ratios = np.array(mag_ratios)
        if len(ratios) != steps * 2:
            def interp(src, n):
                if n == 1:
                    return np.array([src[-1]])
                scale = (len(src) - 1) / (n - 1)
                return src[np.round(np.arange(n) * scale).astype(int)]
            ratios = np.concatenate([interp(ratios[0::2], steps).reshape(-1, 1),
                                     interp(ratios[1::2], steps).reshape(-1, 1)], axis=1).reshape(-1)
        self.mag_ratios, self.num_steps = ratios, 2 * steps
        self.thresh, self.K, self.retention_ratio = threshold, K, retention_ratio
        self.cnt = 0
        self.accumulated_ratio, self.accumulated_steps, self.accumulated_err = [1.0, 1.0], [0, 0], [0.0, 0.0]

    def _retained(self) -> bool:
        return self.cnt < int(self.num_steps * self.retention_ratio) or self.cnt < 2

    def __call__(self) -> bool:
        skip = False
        if not self._retained():
            p = self.cnt % 2
            self.accumulated_ratio[p] = self.accumulated_ratio[p] * self.mag_ratios[self.cnt]
            self.accumulated_steps[p] += 1
            self.accumulated_err[p] += np.abs(1 - self.accumulated_ratio[p])
            if self.accumulated_err[p] < self.thresh and self.accumulated_steps[p] <= self.K:
                skip = True
            else:
                self.accumulated_err[p], self.accumulated_steps[p], self.accumulated_ratio[p] = 0, 0, 1.0
        self.cnt += 1
        return not skip


def _interleaved(model):
    cond, uncond = MAGCACHE_RATIOS[model]
    return [v for pair in zip(cond, uncond) for v in pair]


def _time_embeddings(steps, shift, seed=0, dim=64):
    """e and e0 of a small seeded time MLP (the Wan layout: Linear-SiLU-Linear, then SiLU-Linear to
    6*dim) over the official UniPC timesteps. Its first layer weights the sinusoid's slow
    frequencies (as a trained one does), so consecutive steps differ by a few percent, the range
    TeaCache's published polynomials were fitted on."""
    gen = torch.Generator().manual_seed(seed)
    freqs = torch.pow(10000.0, -torch.arange(128) / 128)  # the sinusoid's frequencies (cos, then sin)
    slow = (0.002 / freqs).clamp(max=1.0).square().repeat(2)
    w1, w2 = torch.randn(dim, 256, generator=gen) * slow / 4, torch.randn(dim, dim, generator=gen) / 8
    w3 = torch.randn(6 * dim, dim, generator=gen) / 8
    t = make_solver("unipc", steps, shift).timesteps
    e = torch.nn.functional.silu(sinusoidal_embedding_1d(256, t).float() @ w1.T) @ w2.T
    e0 = (torch.nn.functional.silu(e) @ w3.T).unflatten(1, (6, dim))
    return e, e0


def _rel_l1(signal):
    return [0.0] + [float((signal[i] - signal[i - 1]).abs().mean() / signal[i - 1].abs().mean())
                    for i in range(1, len(signal))]


@pytest.mark.parametrize("model", ["t2v-1.3B", "t2v-14B", "i2v-14B-480p", "i2v-14B-720p"])
@pytest.mark.parametrize("ret_steps", [False, True], ids=["plain", "ret_steps"])
@pytest.mark.parametrize("threshold", [0.08, 0.2])
@pytest.mark.parametrize("steps", [50, 25])
def test_teacache_schedule_matches_the_official_rule_call_for_call(model, ret_steps, threshold, steps):
    e, e0 = _time_embeddings(steps, shift=5.0)
    signal = e0 if ret_steps else e
    coefficients = TEACACHE_COEFFICIENTS[model]["ret_steps" if ret_steps else "plain"]
    official = OfficialTeaCache(steps, threshold, coefficients, ret_steps)
    expected = [[None] * steps, [None] * steps]
    for step in range(steps):
        for branch in (0, 1):  # the official calls cond then uncond, with the same timestep
            expected[branch][step] = official(signal[step:step + 1])
    ours = teacache_schedule(_rel_l1(signal), coefficients, threshold, ret_steps)
    assert ours == expected
    if model == "t2v-1.3B" and steps == 50:
        # The case the published figures are for: some steps skipped, some not (a test that can fail).
        assert 0 < sum(ours[0]) < steps, ours[0]


def test_teacache_always_computes_the_first_and_last_steps_in_plain_mode():
    e, _ = _time_embeddings(50, shift=5.0)
    schedule = teacache_schedule(_rel_l1(e), TEACACHE_COEFFICIENTS["t2v-1.3B"]["plain"], 1e9, False)
    assert [i for i, c in enumerate(schedule[0]) if c] == [0, 49]  # threshold out of reach: only the fixed ones
    ret = teacache_schedule(_rel_l1(e), TEACACHE_COEFFICIENTS["t2v-1.3B"]["ret_steps"], 1e9, True)
    assert [i for i, c in enumerate(ret[0]) if c] == [0, 1, 2, 3, 4]  # first 5, no cutoff with ret_steps


ONE_DIT = sorted(m for m in MAGCACHE_RATIOS if get_preset(m).experts is None)
TWO_EXPERTS = sorted(m for m in MAGCACHE_RATIOS if get_preset(m).experts is not None)


@pytest.mark.parametrize("ratios", [*ONE_DIT, *(f"{m}/image" for m in MAGCACHE_IMAGE_RATIOS)])
@pytest.mark.parametrize("threshold, K, retention", [(0.12, 2, 0.2), (0.06, 2, 0.2), (0.24, 3, 0.1), (0.12, 1, 0.5),
                                                     (0.3, 3, 0.0)])
@pytest.mark.parametrize("steps", [50, 40, 25, 7])
def test_magcache_schedule_matches_the_official_rule_call_for_call(ratios, threshold, K, retention, steps):
    """One DiT: MagCache4Wan2.1's rule, which MagCache4Wan2.2 keeps for TI2V-5B (both its lists)."""
    model, _, image = ratios.partition("/")
    pair = (MAGCACHE_IMAGE_RATIOS if image else MAGCACHE_RATIOS)[model]
    official = OfficialMagCache(steps, threshold, K, retention, [v for both in zip(*pair) for v in both])
    expected = [[None] * steps, [None] * steps]
    for step in range(steps):
        for branch in (0, 1):
            expected[branch][step] = official()
    assert magcache_schedule(pair, steps, threshold, K, retention) == expected


class OfficialMagCache22(OfficialMagCache):
    """MagCache4Wan2.2's per-call rule for the A14B models (magcache_generate.py, `magcache_forward`
    with `split_step`): "t2v" mode retains the first int(split * retention) calls and the low-noise
    calls from split to (calls - split) * retention + split inclusive; "i2v" mode every call before
    int(split + (calls - split) * retention). The one change, as for Wan2.1: the first call of each
    expert and branch computes without touching the accumulators (the official would reuse the
    other expert's residual there, or an empty one at step 0)."""

    def __init__(self, steps, threshold, K, retention_ratio, mag_ratios, switch, mode):
        super().__init__(steps, threshold, K, retention_ratio, mag_ratios)
        self.split, self.mode = 2 * switch, mode

    def _retained(self) -> bool:
        n, s, r, cnt = self.num_steps, self.split, self.retention_ratio, self.cnt
        if self.mode == "i2v":
            retained = cnt < int(s + (n - s) * r)
        else:
            retained = cnt < int(s * r) or (s <= cnt <= (n - s) * r + s)
        return retained or cnt < 2 or cnt in (s, s + 1)


@pytest.mark.parametrize("model", TWO_EXPERTS)
@pytest.mark.parametrize("threshold, K, retention", [(0.06, 2, 0.4), (0.06, 2, 0.1), (0.12, 2, 0.2), (0.24, 3, 0.0),
                                                     (0.3, 3, 0.5), (0.3, 4, 0.05)])
@pytest.mark.parametrize("steps", [40, 30, 8])
def test_two_expert_magcache_schedule_matches_the_official_rule_call_for_call(model, threshold, K, retention, steps):
    preset = get_preset(model)
    switch = preset.experts.first_low_noise_step(make_solver("unipc", steps, preset.sample.shift).timesteps)
    assert 0 < switch < steps
    mode = "i2v" if preset.dit.model_type == "i2v" else "t2v"
    official = OfficialMagCache22(steps, threshold, K, retention, _interleaved(model), switch, mode)
    expected = [[None] * steps, [None] * steps]
    for step in range(steps):
        for branch in (0, 1):
            expected[branch][step] = official()
    ours = magcache_schedule(MAGCACHE_RATIOS[model], steps, threshold, K, retention, switch, mode == "t2v")
    assert ours == expected
    assert all(branch[0] and branch[switch] for branch in ours)  # each expert computes its first step
    if mode == "i2v":
        assert all(all(branch[:switch]) for branch in ours)  # I2V-A14B: the high-noise expert always computes


@pytest.mark.parametrize("model, switch", [("t2v-A14B", 26), ("i2v-A14B", 15)])
def test_published_a14b_ratios_dip_at_the_expert_switch_of_their_defaults(model, switch):
    """The published A14B lists span both experts: their one dip is the ratio between the two
    experts' residuals, which falls where this engine switches at the model's 40 steps and shift."""
    preset = get_preset(model)
    assert preset.experts.first_low_noise_step(make_solver("unipc", 40, preset.sample.shift).timesteps) == switch
    for branch in MAGCACHE_RATIOS[model]:  # the only step 0.05 below both neighbours (the tail falls smoothly)
        dips = [i for i in range(1, 39) if branch[i] < min(branch[i - 1], branch[i + 1]) - 0.05]
        assert dips == [switch], dips


def test_a14b_magcache_at_the_published_settings_skips_low_noise_steps():
    """T2V-A14B at MagCache4Wan2.2's command (threshold 0.06, K 2, retention 0.4): lossy, not idle."""
    schedule = magcache_schedule(MAGCACHE_RATIOS["t2v-A14B"], 40, 0.06, 2, 0.4, 26)
    assert schedule[0][:10] == [True] * 10 and schedule[0][26:32] == [True] * 6  # retained: int(52 * .4) calls; 14 * .4
    assert 0 < schedule[0].count(False) < 20, schedule[0]
    assert magcache_schedule(MAGCACHE_RATIOS["t2v-A14B"], 40, 0.0, 2, 0.4, 26) == [[True] * 40] * 2


def test_magcache_defaults_on_t2v_1_3b_at_50_steps_skip_about_half():
    schedule = magcache_schedule(MAGCACHE_RATIOS["t2v-1.3B"], 50, 0.12, 2, 0.2)
    computed = sum(schedule[0])
    assert schedule[0][:10] == [True] * 10  # retention 0.2 of 50 steps
    assert 15 <= computed <= 30, computed  # the published ~2.2x at the defaults


def test_nearest_interp_keeps_the_ends_and_rounds_half_to_even():
    values = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert nearest_interp(values, 5) == values
    assert nearest_interp(values, 3) == [0.0, 2.0, 4.0]
    assert nearest_interp(values, 1) == [4.0]
    assert nearest_interp([0.0, 1.0, 2.0, 3.0], 3) == [0.0, 2.0, 3.0]  # 1.5 rounds to 2 (numpy)


def test_threshold_zero_computes_every_step_even_where_the_polynomial_is_negative():
    e, _ = _time_embeddings(20, shift=5.0)
    negative = (0.0, 0.0, 0.0, 0.0, -1.0)  # rescaled change always -1: the official rule would skip
    assert teacache_schedule(_rel_l1(e), negative, 0.0, False) == [[True] * 20, [True] * 20]
    assert magcache_schedule(MAGCACHE_RATIOS["t2v-1.3B"], 20, 0.0, 2, 0.2) == [[True] * 20, [True] * 20]
