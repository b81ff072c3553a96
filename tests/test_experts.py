"""Two-expert (Wan2.2 A14B) models: the high-noise DiT on the steps at or above the boundary, the
low-noise DiT on the rest, each with its own guidance, on one solver (Wan2.2's `WanT2V.generate`).

The loop is held to a hand-written copy of the official one: run separately, the CFG branches
are the same calls, so the latents are equal bit for bit; batched, within the fp32 GEMM-order
noise the one-DiT test allows (1e-5 relative L2 after a few solver steps).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import wan_engine
from checkpoint_factory import write_original, write_two_experts
from wan_engine.cache import CacheConfig
from wan_engine.configs import ExpertSplit, ModelConfig, SampleDefaults, get_preset
from wan_engine.engine import GenerationRequest, RequestLimits
from wan_engine.engine.request import RequestError, resolve_request
from wan_engine.loading.errors import CheckpointError
from wan_engine.loading.layout import detect_layout
from wan_engine.placement import stage_placement
from wan_engine.reference.schedulers import make_solver

KW = dict(size=(32, 32), num_frames=5, steps=6, seed=5)
BOUNDARY_T = 875  # T2V-A14B: 0.875 x 1000


@pytest.fixture(scope="module")
def reference():
    return wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine="reference")


@pytest.fixture(scope="module")
def executor():
    return wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu")


def _official_loop(pipe, req, ctx, ctx_null, high, low):
    """Wan2.2's loop, written out: the expert and its guidance chosen by `t >= boundary` every step."""
    x = pipe.initial_noise(req)
    solver = make_solver(req.solver, req.steps, req.shift)
    for i, t in enumerate(solver.timesteps):
        dit, g = (high, req.guidance) if t.item() >= BOUNDARY_T else (low, req.low_noise_guidance)
        c, u = dit(x, t[None], ctx), dit(x, t[None], ctx_null)
        x = solver.step(u + g * (c - u), i, x)
    return x


@pytest.mark.parametrize("engine", ["reference", "executor-separate", "executor-batched"])
def test_denoise_loop_is_the_official_two_expert_loop(reference, executor, engine):
    pipe = {"reference": reference, "executor-batched": executor}.get(engine) or \
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", cfg_batch=False)
    req = pipe.make_request("a boat", **KW)
    assert (req.guidance, req.low_noise_guidance) == (4.0, 3.0)  # the model's defaults (official (3.0, 4.0))
    ctx, ctx_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
    with torch.inference_mode():
        got = pipe.denoise(req, ctx, ctx_null)
        want = _official_loop(pipe, req, ctx, ctx_null, pipe.dit, pipe.low_noise_dit)
        swapped = _official_loop(pipe, req, ctx, ctx_null, pipe.low_noise_dit, pipe.dit)
    if engine == "executor-batched":
        assert ((got - want).norm() / want.norm()).item() <= 1e-5
    else:
        assert torch.equal(got, want)
    assert ((swapped - want).norm() / want.norm()).item() > 1e-2  # the experts differ: the test can tell


class _Counting:
    """A reference-style DiT that records the timesteps it is called at."""

    def __init__(self, dit):
        self.dit, self.calls = dit, []

    def __call__(self, x, t, context, **kw):
        self.calls.append(int(t[0]))
        return self.dit(x, t, context, **kw)


@pytest.mark.parametrize("steps, shift, solver", [(6, 5.0, "unipc"), (10, 12.0, "dpm++"), (3, 1.0, "euler")])
def test_each_expert_runs_exactly_its_steps(reference, steps, shift, solver):
    high, low = _Counting(reference.dit), _Counting(reference.low_noise_dit)
    pipe = wan_engine.WanPipeline(**{**_components(reference), "dit": high, "low_noise_dit": low})
    done = []
    pipe.run("a kite", size=(32, 32), num_frames=1, steps=steps, shift=shift, solver=solver, seed=1,
             on_step=lambda i, n: done.append((i, n)))
    timesteps = [int(t) for t in make_solver(solver, steps, shift).timesteps]
    assert high.calls == [t for t in timesteps if t >= BOUNDARY_T for _ in range(2)]  # cond + uncond
    assert low.calls == [t for t in timesteps if t < BOUNDARY_T for _ in range(2)]
    assert done == [(i + 1, steps) for i in range(steps)]  # progress runs across the switch


def _components(pipe) -> dict:
    return dict(config=pipe.config, text_encoder=pipe.text_encoder, dit=pipe.dit, vae=pipe.vae, device=pipe.device,
                dtype=pipe.dtype, low_noise_dit=pipe.low_noise_dit, cuda_graphs=False)


def test_boundary_picks_the_first_step_below_it():
    split = ExpertSplit(0.875)
    assert split.first_low_noise_step(torch.tensor([999, 900, 875, 874, 500])) == 3  # 875 >= 875 is high noise
    assert split.first_low_noise_step(torch.tensor([999, 950])) == 2  # no low-noise step
    assert split.first_low_noise_step(torch.tensor([800, 500])) == 0
    # The published T2V-A14B schedule (40 UniPC steps at shift 12): 26 high-noise steps.
    a14b = get_preset("t2v-A14B")
    timesteps = make_solver(a14b.sample.solver, a14b.sample.steps, a14b.sample.shift).timesteps
    assert a14b.experts.first_low_noise_step(timesteps) == sum(int(t) >= 875 for t in timesteps) == 26
    for bad in (0.0, 1.0, -0.5, "0.9", float("nan")):
        with pytest.raises(ValueError, match="boundary must be a number in \\(0, 1\\)"):
            ExpertSplit(bad)


def test_published_a14b_defaults():
    a14b = get_preset("t2v-A14B")
    s = a14b.sample
    # wan/configs/wan_t2v_A14B.py: sample_guide_scale (3.0 low noise, 4.0 high noise), shift 12, 40 steps.
    assert (s.guidance, s.low_noise_guidance, s.shift, s.steps, s.size, s.num_frames) == (4.0, 3.0, 12.0, 40,
                                                                                          (1280, 720), 81)
    assert a14b.experts.boundary == 0.875 and a14b.dit == get_preset("t2v-14B").dit


def test_guidance_resolution(reference):
    def pair(**kw):
        req = reference.make_request("p", seed=0, **kw)
        return req.guidance, req.low_noise_guidance

    assert pair() == (4.0, 3.0)
    assert pair(guidance=4.0) == (4.0, 4.0)  # one value given: both experts (official, diffusers)
    assert pair(guidance=6.0, low_noise_guidance=2.0) == (6.0, 2.0)
    assert pair(low_noise_guidance=2.5) == (4.0, 2.5)
    with pytest.raises(ValueError, match="low_noise_guidance must be >= 0"):
        pair(low_noise_guidance=-1.0)
    with pytest.raises(ValueError, match="low_noise_guidance must be finite"):
        pair(low_noise_guidance=float("inf"))
    one = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    with pytest.raises(ValueError, match="low_noise_guidance: model 'tiny' has one DiT"):
        one.make_request("p", low_noise_guidance=3.0)


def test_engine_request_resolves_guidance_scale_2_alike():
    limits, a14b = RequestLimits(), get_preset("tiny-a14b").sample
    resolved = resolve_request(GenerationRequest("p"), a14b, limits)
    assert (resolved.guidance_scale, resolved.guidance_scale_2) == (4.0, 3.0)
    resolved = resolve_request(GenerationRequest("p", guidance_scale=5.0), a14b, limits)
    assert (resolved.guidance_scale, resolved.guidance_scale_2) == (5.0, 5.0)
    resolved = resolve_request(GenerationRequest("p", guidance_scale_2=1.5), a14b, limits)
    assert (resolved.guidance_scale, resolved.guidance_scale_2) == (4.0, 1.5)
    with pytest.raises(RequestError, match="guidance_scale_2 must be >= 0") as err:
        resolve_request(GenerationRequest("p", guidance_scale_2=-2.0), a14b, limits)
    assert err.value.field == "guidance_scale_2"
    with pytest.raises(RequestError, match="only; this model has one DiT") as err:
        resolve_request(GenerationRequest("p", guidance_scale_2=3.0), get_preset("tiny").sample, limits)
    assert err.value.field == "guidance_scale_2"


def test_low_noise_guidance_changes_only_the_low_noise_steps(executor):
    base = executor.generate("a lamp", **KW)
    assert np.array_equal(executor.generate("a lamp", guidance=4.0, low_noise_guidance=3.0, **KW), base)
    assert not np.array_equal(executor.generate("a lamp", low_noise_guidance=1.0, **KW), base)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_both_layouts_load_two_experts_as_the_preset(tmp_path, reference, layout):
    config = get_preset("tiny-a14b")
    root = write_two_experts(tmp_path / layout, config, layout, seed=0, boundary=0.875)
    found = detect_layout(root)
    assert found.has_experts and found.dit_dir.name in ("high_noise_model", "transformer")
    assert "dit (low)" in found.describe()
    pipe = wan_engine.WanPipeline.from_pretrained(str(root), device="cpu", engine="reference")
    assert pipe.config.experts == config.experts and pipe.config.sample == config.sample
    assert pipe.config.name.startswith("tiny-a14b")
    for mine, theirs in ((pipe.dit, reference.dit), (pipe.low_noise_dit, reference.low_noise_dit)):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    kw = dict(size=(32, 32), num_frames=1, steps=6, seed=2)
    assert np.array_equal(pipe.generate("a fox", **kw), reference.generate("a fox", **kw))


def test_diffusers_boundary_ratio_is_read(tmp_path):
    root = write_two_experts(tmp_path / "d", get_preset("tiny-a14b"), "diffusers", boundary=0.9)
    assert detect_layout(root).boundary == 0.9
    pipe = wan_engine.WanPipeline.from_pretrained(str(root), device="cpu")
    assert pipe.config.experts == ExpertSplit(0.9)
    bad = write_two_experts(tmp_path / "bad", get_preset("tiny-a14b"), "diffusers", boundary=1.5)
    with pytest.raises(CheckpointError, match="boundary_ratio must be a number in \\(0, 1\\), got 1.5"):
        detect_layout(bad)


def test_half_a_pair_and_mismatched_experts_are_refused(tmp_path):
    config = get_preset("tiny-a14b")
    root = write_two_experts(tmp_path / "o", config, "original")
    for f in (root / "low_noise_model").iterdir():
        f.unlink()
    with pytest.raises(CheckpointError, match="high_noise_model/ holds DiT weights but low_noise_model/ does not"):
        detect_layout(root)
    d = write_two_experts(tmp_path / "d", config, "diffusers")
    for f in (d / "transformer_2").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="the low-noise expert is missing"):
        detect_layout(d)
    # A low-noise expert of another size.
    root = write_two_experts(tmp_path / "m", config, "original")
    other = write_original(tmp_path / "other", config.replace(dit=config.dit.__class__(
        dim=48, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32)))
    for f in (root / "low_noise_model").iterdir():
        f.unlink()
    for f in [*other.glob("diffusion_pytorch_model*"), other / "config.json"]:
        f.rename(root / "low_noise_model" / f.name)
    with pytest.raises(CheckpointError, match="the two experts differ in architecture"):
        wan_engine.WanPipeline.from_pretrained(str(root), device="cpu")


def test_one_dit_options_are_refused_before_the_load():
    with pytest.raises(ValueError, match="cache: teacache's polynomial belongs to one DiT"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", cache=CacheConfig.parse("teacache:0.2"))


def _write_lora(path, seed: int, rank: int = 4):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    save_file({"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.randn(rank, 32, generator=gen),
               "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.randn(64, rank, generator=gen)}, str(path))
    return str(path)


def test_each_expert_takes_its_own_loras(tmp_path):
    """A LoRA pair merges each file into its own expert, W + s (B @ A) on the official weight, and
    the base weights come back bit for bit."""
    from wan_engine.lora.merge import lowrank_delta
    from wan_engine.loading.lora_format import parse_lora

    high, low = _write_lora(tmp_path / "h.safetensors", 1), _write_lora(tmp_path / "l.safetensors", 2)
    base = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine="reference")
    pipe = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine="reference",
                                                  loras={"high_noise": [high], "low_noise": [f"{low}:0.5"]})
    name = "blocks.0.ffn.0.weight"
    for dit, base_dit, path, strength in ((pipe.dit, base.dit, high, 1.0), (pipe.low_noise_dit, base.low_noise_dit,
                                                                             low, 0.5)):
        (part,) = parse_lora(path, {name}).targets[name]
        want = base_dit.state_dict()[name] + lowrank_delta(part, strength, (64, 32), "cpu")
        assert torch.equal(dit.state_dict()[name], want)
    assert [r.spec.strength for r in pipe.lora.reports] == [1.0, 0.5]
    pipe.set_loras({"low_noise": [low]})  # the high-noise expert back to its base
    assert torch.equal(pipe.dit.state_dict()[name], base.dit.state_dict()[name])
    assert not torch.equal(pipe.low_noise_dit.state_dict()[name], base.low_noise_dit.state_dict()[name])
    pipe.set_loras(None)
    for mine, theirs in ((pipe.dit, base.dit), (pipe.low_noise_dit, base.low_noise_dit)):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))


def test_expert_loras_are_checked_before_either_expert_changes(tmp_path, executor):
    good = _write_lora(tmp_path / "g.safetensors", 1)
    wide = _write_lora(tmp_path / "w.safetensors", 2)
    from safetensors.torch import save_file

    save_file({"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.zeros(4, 48),
               "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.zeros(64, 4)}, wide)
    before = {k: v.clone() for k, v in executor.dit.official_slots().items() for v in [v[0]]}
    with pytest.raises(CheckpointError, match="a LoRA for another model size"):
        executor.set_loras({"high_noise": [good], "low_noise": [wide]})
    assert all(torch.equal(v[0], before[k]) for k, v in executor.dit.official_slots().items())
    with pytest.raises(ValueError, match="takes its LoRAs per expert"):
        executor.set_loras([good])
    with pytest.raises(ValueError, match="unknown expert 'high'"):
        executor.set_loras({"high": [good]})
    with pytest.raises(ValueError, match="takes its LoRAs per expert"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", loras=[good])
    with pytest.raises(ValueError, match="this model has one DiT"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", loras={"high_noise": [good]})
    with pytest.raises(CheckpointError, match="LoRA file not found"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", loras={"low_noise": ["/no/such.safetensors"]})
    executor.set_loras(None)
    with pytest.raises(ValueError, match="use magcache or fbcache"):
        executor.generate("p", cache=CacheConfig.parse("teacache:0.2"), **KW)


def test_cli_expert_loras(tmp_path, capsys):
    from wan_engine.cli import main

    lora = _write_lora(tmp_path / "l.safetensors", 3)
    common = ["generate", "--prompt", "a crab", "--size", "32x32", "--frames", "1", "--steps", "2", "--seed", "1"]
    out = tmp_path / "a.mp4"
    assert main([*common, "--model", "tiny-a14b", "--output", str(out), "--high-noise-lora", lora,
                 "--low-noise-lora", f"{lora}:0.5"]) == 0 and out.is_file()
    for model, flags, message in (("tiny-a14b", ["--lora", lora], "name the expert of each LoRA"),
                                  ("tiny", ["--low-noise-lora", lora], "use --lora")):
        bad = tmp_path / "bad.mp4"
        assert main([*common, "--model", model, "--output", str(bad), *flags]) == 2
        assert message in capsys.readouterr().err and not bad.exists()


def test_pipeline_and_config_check_the_pair(reference):
    parts = _components(reference)
    with pytest.raises(ValueError, match="is a two-expert model and needs one"):
        wan_engine.WanPipeline(**{**parts, "low_noise_dit": None})
    with pytest.raises(ValueError, match="needs sample.low_noise_guidance"):
        ModelConfig("x", get_preset("tiny").dit, experts=ExpertSplit(0.9))
    with pytest.raises(ValueError, match="a i2v DiT with CLIP features has one expert"):
        i2v = get_preset("tiny-i2v")
        ModelConfig("x", i2v.dit, sample=SampleDefaults(low_noise_guidance=3.0), experts=ExpertSplit(0.9))


def test_offload_holds_one_expert_on_the_gpu_at_a_time():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    high = stage_placement("denoising", device=gpu, text_device=gpu, offload=True)
    low = stage_placement("denoising_low_noise", device=gpu, text_device=gpu, offload=True)
    assert (high.dit, high.low_noise_dit, low.dit, low.low_noise_dit) == (gpu, cpu, cpu, gpu)
    assert low.text_encoder == cpu and stage_placement("vae_decode", device=gpu, text_device=gpu,
                                                       offload=True).low_noise_dit == cpu
    resident = stage_placement("denoising_low_noise", device=gpu, text_device=gpu, offload=False)
    assert (resident.dit, resident.low_noise_dit) == (gpu, gpu)


def test_graph_keys_tell_the_experts_apart(executor):
    from wan_engine.executor.steps import StepFunctions

    req = executor.make_request("p", **KW)
    ctx, _ = executor.encode_prompts(req.prompt, req.negative_prompt)
    x = executor.initial_noise(req)
    t = torch.tensor([999])
    keys = []
    with torch.inference_mode():
        for dit in (executor.dit, executor.low_noise_dit):
            patches, rope = dit.tokens_in(x, t)
            text = dit.prepare_text(ctx)
            keys.append(StepFunctions(dit, rope, text).key("full", patches, text))
    assert keys[0] != keys[1]  # a graph captured on one expert's weights is never replayed for the other


def test_info_and_cli(tmp_path, capsys):
    from wan_engine.cli import main

    root = write_two_experts(tmp_path / "m", get_preset("tiny-a14b"), "original")
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "dit (high)" in out and "dit (low)" in out and "two experts" in out
    video = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(root), "--prompt", "a crab", "--output", str(video), "--size", "32x32",
                 "--frames", "1", "--steps", "2", "--low-noise-guidance", "2.0", "--seed", "1"]) == 0
    assert video.is_file()
    assert main(["generate", "--model", "tiny", "--prompt", "a crab", "--output", str(tmp_path / "x.mp4"),
                 "--low-noise-guidance", "2.0"]) == 2
    assert "--low-noise-guidance applies to two-expert models" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    assert main(["generate", "--model", "tiny-a14b", "--prompt", "p", "--output", str(tmp_path / "y.mp4"),
                 "--low-noise-guidance", "-1"]) == 2
    assert "--low-noise-guidance must be >= 0" in capsys.readouterr().err


def test_model_index_without_boundary_takes_the_preset_boundary(tmp_path):
    root = write_two_experts(tmp_path / "d", get_preset("tiny-a14b"), "diffusers")
    assert "boundary_ratio" not in json.loads((root / "model_index.json").read_text())
    assert wan_engine.WanPipeline.from_pretrained(str(root), device="cpu").config.experts.boundary == 0.875


def test_the_server_takes_guidance_scale_2():
    from wan_engine.serve.schema import new_record, parse_create

    req, _, _ = parse_create({"prompt": "p", "guidance_scale_2": "2.5"}, from_form=True)
    assert req.guidance_scale_2 == 2.5
    with pytest.raises(RequestError, match="guidance_scale_2 must be a finite number"):
        parse_create({"prompt": "p", "guidance_scale_2": float("nan")}, from_form=False)
    resolved = resolve_request(req, get_preset("tiny-a14b").sample, RequestLimits())
    assert new_record("j", resolved, "m", 16, 0.0)["guidance_scale_2"] == 2.5


def test_wan22_distill_solver_is_lightx2vs_euler_step():
    from wan_engine.sampling import DistillSolver

    solver = DistillSolver((1000, 750, 500, 250), shift=5.0, seed=0, renoise=False)
    assert solver.name == "distill-euler" and solver.generator is None
    sigmas = [float(s) for s in solver.sigmas]
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        v = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(i + 1))
        # Wan22StepDistillScheduler.step_post: x0 = x - sigma v, then + sigma_next v (none after the last)
        want = x - sigmas[i] * v
        if i < 3:
            want = want + sigmas[i + 1] * v
        x = solver.step(v, i, x)
        assert torch.equal(x, want)


def test_distill_4step_a14b_switches_experts_where_lightx2v_does(reference):
    """LightX2V runs the high-noise expert for `boundary_step_index` 2 steps; the boundary rule on the
    preset's timesteps (1000, 937.5 | 833.3, 625) puts the switch at the same step."""
    high, low = _Counting(reference.dit), _Counting(reference.low_noise_dit)
    pipe = wan_engine.WanPipeline(**{**_components(reference), "dit": high, "low_noise_dit": low})
    req = pipe.make_request("a kite", size=(32, 32), num_frames=1, seed=1, sampling="distill-4step-a14b")
    assert (req.steps, req.shift, req.solver, req.cfg) == (4, 5.0, "distill-euler", False)
    ctx, ctx_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
    with torch.inference_mode():
        got = pipe.denoise(req, ctx, ctx_null)
    assert high.calls == [1000, 937] and low.calls == [833, 625]  # one forward per step, no CFG
    from wan_engine.sampling import make_sampling_solver

    solver = make_sampling_solver(req.solver, req.steps, req.shift, req.seed)
    # LightX2V's I2V-A14B setting (configs/wan22/wan_moe_i2v_distill.json) has the same timesteps and
    # boundary_step_index 2, which is where I2V's boundary 0.900 falls too.
    assert get_preset("i2v-A14B").experts.first_low_noise_step(solver.timesteps) == 2
    x = pipe.initial_noise(req)
    with torch.inference_mode():
        for i, t in enumerate(solver.timesteps):
            x = solver.step((reference.dit if i < 2 else reference.low_noise_dit)(x, t[None], ctx), i, x)
    assert torch.equal(got, x)


def test_fp8_and_the_engine_take_both_experts():
    from wan_engine.engine import Engine

    pipe = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", quant="fp8-emulated")
    assert pipe.dit.quant == pipe.low_noise_dit.quant == "fp8-emulated"
    engine = Engine(pipe)
    try:
        result = engine.generate(GenerationRequest("a lamp", size=(32, 32), num_frames=1, num_inference_steps=6,
                                                   seed=5, guidance_scale_2=1.0))
        direct = pipe.generate("a lamp", size=(32, 32), num_frames=1, steps=6, seed=5, low_noise_guidance=1.0)
    finally:
        engine.close()
    assert np.array_equal(result.frames, direct)


def test_fbcache_keeps_each_experts_residuals_apart(executor):
    """FBCache on two experts: threshold 0 is the uncached run bit for bit; with a threshold that
    reuses every step it can, each expert still computes its own first step (the low-noise expert
    never adds the high-noise one's residual)."""
    base = executor.run("a boat", **KW)
    lossless = executor.run("a boat", cache=CacheConfig.parse("fbcache:0"), **KW)
    assert np.array_equal(lossless.frames, base.frames) and all(all(b) for b in lossless.cache.computed)
    timesteps = make_solver("unipc", KW["steps"], executor.config.sample.shift).timesteps
    switch = executor.config.experts.first_low_noise_step(timesteps)
    assert 0 < switch < KW["steps"]
    greedy = executor.run("a boat", cache=CacheConfig.parse("fbcache:100"), **KW)
    want = tuple(i in (0, switch) for i in range(KW["steps"]))
    assert greedy.cache.computed == (want, want)


def test_magcache_on_two_experts_from_a_calibration_over_both(executor, tmp_path):
    """`calibrate` records both experts' steps in one run (the switch step's ratio compares the two
    experts' residuals, as the official calibration does); MagCache then follows MagCache4Wan2.2's
    two-expert rule: threshold 0 is the uncached video bit for bit, and a threshold that skips all
    it can still computes each expert's first step."""
    from wan_engine.cache.schedules import magcache_schedule
    from wan_engine.pipelines.calibrate import calibrate_pipeline

    calibration = calibrate_pipeline(executor, ["a boat", "a lamp"], steps=KW["steps"], size=KW["size"],
                                     num_frames=KW["num_frames"])
    assert calibration.teacache == {} and all(len(branch) == KW["steps"] for branch in calibration.magcache)
    path = str(calibration.save(tmp_path / "a14b.json"))
    base = executor.run("a boat", **KW)
    lossless = executor.run("a boat", cache=CacheConfig("magcache", 0.0, calibration=path), **KW)
    assert np.array_equal(lossless.frames, base.frames) and all(all(b) for b in lossless.cache.computed)
    switch = executor.config.experts.first_low_noise_step(make_solver("unipc", KW["steps"], executor.config.sample.shift)
                                                          .timesteps)
    greedy = executor.run("a boat", cache=CacheConfig("magcache", 100.0, max_skips=2, retention=0.0,
                                                      calibration=path), **KW)
    want = magcache_schedule(calibration.magcache, KW["steps"], 100.0, 2, 0.0, switch)
    assert greedy.cache.computed == tuple(map(tuple, want))
    assert all(b[0] and b[switch] and not all(b) for b in greedy.cache.computed), greedy.cache.computed
    assert not np.array_equal(greedy.frames, base.frames)  # lossy: it reused residuals
    with pytest.raises(ValueError, match="calibrates MagCache only"):
        calibrate_pipeline(executor, ["a boat"], policies="teacache")
    with pytest.raises(ValueError, match="teacache's polynomial belongs to one DiT"):
        executor.run("a boat", cache=CacheConfig("teacache", 0.1, calibration="t2v-1.3B"), **KW)
