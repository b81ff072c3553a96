"""CFG-free sampling: one DiT forward per step on the conditional branch, equal to a plain loop,
and the distill-4step preset's schedule against LightX2V's published values."""
import numpy as np
import pytest
import torch

import wan_engine
from wan_engine.sampling import DistillSolver, make_sampling_solver


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")


def count_forwards(pipe, monkeypatch):
    calls = []
    real = pipe.dit.run_blocks

    def counting(stream, text, stop=None):
        calls.append(stream.batch)
        return real(stream, text, stop)
    monkeypatch.setattr(pipe.dit, "run_blocks", counting)
    return calls


def test_one_forward_per_step_equal_to_the_conditional_loop(pipe, monkeypatch):
    req = pipe.make_request("a cat", size=(32, 32), num_frames=5, steps=3, seed=5, cfg=False)
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        calls = count_forwards(pipe, monkeypatch)
        latents = pipe.denoise(req, context, context_null)
        assert calls == [1, 1, 1]  # one batch-1 forward per step
        monkeypatch.undo()
        # The reference loop: the conditional velocity alone, stepped by the same solver.
        solver = make_sampling_solver(req.solver, req.steps, req.shift, req.seed)
        x = pipe.initial_noise(req)
        text = pipe.dit.prepare_text(context)
        for i, t in enumerate(solver.timesteps):
            x = solver.step(pipe.dit.predict(x, t.reshape(1), text), i, x)
    assert torch.equal(latents, x)


def test_cfg_default_runs_both_branches_and_guidance_1_is_not_cfg_free(pipe, monkeypatch):
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=5)
    with torch.inference_mode():
        calls = count_forwards(pipe, monkeypatch)
        pipe.generate("a cat", guidance=1.0, **kw)
    assert calls == [2, 2]  # both branches, batched: guidance 1 is still u + 1 * (c - u)
    monkeypatch.undo()
    free = pipe.generate("a cat", cfg=False, **kw)
    assert free.shape == (1, 32, 32, 3)
    assert np.array_equal(free, pipe.generate("a cat", cfg=False, guidance=7.0, **kw))  # guidance unused


@pytest.mark.parametrize("policy,options,calibration", [("teacache:0.3", "", "t2v-14B"),
                                                        ("magcache:0.3", ",K=3,retention=0.1", "t2v-1.3B"),
                                                        ("fbcache:1.0", "", None)])
def test_a_step_cache_without_cfg_reports_the_cond_branch(pipe, monkeypatch, policy, options, calibration):
    """A cached request without CFG runs and reports the cond branch alone (it failed at the report,
    which waited for the uncond branch's decisions). Threshold 0 gives the uncached video bit for
    bit; the loose threshold reuses steps, and (TeaCache, MagCache) runs the blocks once per computed step."""
    from wan_engine.cache import CacheConfig

    kw = dict(size=(48, 32), num_frames=9, steps=6, seed=3, cfg=False)
    plain = pipe.run("a red kite", cache=None, **kw).frames
    name = policy.split(":")[0]
    exact = pipe.run("a red kite", cache=CacheConfig.parse(f"{name}:0{options}", calibration=calibration), **kw)
    assert np.array_equal(exact.frames, plain) and exact.cache.computed == ((True,) * 6,)
    calls = count_forwards(pipe, monkeypatch)
    loose = pipe.run("a red kite", cache=CacheConfig.parse(policy + options, calibration=calibration), **kw)
    monkeypatch.undo()
    assert len(loose.cache.computed) == 1 and 0 < loose.cache.counts()[0] < 6
    assert loose.cache.summary() == f"computed {loose.cache.counts()[0]}/6 (cond only, no CFG)"
    if name != "fbcache":  # FBCache runs block 0 on every step to decide
        assert calls == [1] * loose.cache.counts()[0]


def test_reference_engine_and_cfg_parallel_refusal(pipe):
    ref = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="reference")
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=5, cfg=False)
    a, b = ref.generate("a cat", **kw), pipe.generate("a cat", **kw)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="cfg must be"):
        pipe.make_request("a cat", cfg="no")


def test_distill_schedule_matches_lightx2v():
    solver = DistillSolver((1000, 750, 500, 250), shift=5.0, seed=0)
    # sigma = 5x / (1 + 4x) at x = 1, 0.75, 0.5, 0.25 (float32 linspace(1, 0, 1001)[[0, 250, 500, 750]])
    want = [1.0, 3.75 / 4.0, 2.5 / 3.0, 1.25 / 2.0]
    assert torch.allclose(solver.sigmas[:4].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6)
    assert solver.sigmas[4] == 0
    assert torch.allclose(solver.timesteps.double(), torch.tensor(want, dtype=torch.float64) * 1000, atol=1e-3)
    # The last step returns x0 = x - sigma * v; the others re-noise x0 to the next sigma.
    x, v = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    gen = torch.Generator().manual_seed(1)
    out = solver.step(v, 0, x)
    noise = torch.randn(x.shape, generator=gen)
    assert torch.allclose(out, (1 - want[1]) * (x - 1.0 * v) + want[1] * noise, atol=1e-6)


def test_distill_preset_through_the_engine_and_cli(pipe, tmp_path, monkeypatch):
    from wan_engine.cli import main

    req = pipe.make_request("a cat", size=(32, 32), num_frames=1, sampling="distill-4step", seed=1)
    assert (req.steps, req.shift, req.solver, req.cfg) == (4, 5.0, "distill", False)
    with pytest.raises(ValueError, match="steps must be 4"):
        pipe.make_request("a cat", steps=8, sampling="distill-4step")
    with pytest.raises(ValueError, match="sampling must be one of"):
        pipe.make_request("a cat", sampling="fast")
    with torch.inference_mode():
        calls = count_forwards(pipe, monkeypatch)
        pipe.generate("a cat", size=(32, 32), num_frames=1, sampling="distill-4step", seed=1)
    assert calls == [1, 1, 1, 1]
    out = tmp_path / "o.mp4"
    common = ["generate", "--model", "tiny", "--prompt", "a cat", "--size", "32x32", "--frames", "1", "--device", "cpu"]
    assert main(common + ["--sampling", "distill-4step", "--output", str(out)]) == 0 and out.is_file()
    assert main(common + ["--no-cfg", "--steps", "2", "--output", str(out)]) == 0
    assert main(common + ["--sampling", "nope", "--output", str(out)]) == 2
