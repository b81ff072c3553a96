"""End to end: the tiny preset from prompt to MP4, through the Python API and the CLI."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import wan_engine
from checkpoint_factory import write_diffusers, write_original
from wan_engine.cli import main as cli_main
from wan_engine.bench.accuracy import psnr
from wan_engine.configs import get_preset
from wan_engine.video import read_video


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")


def test_generate_shape_and_determinism(pipe):
    a = pipe.generate("a red fox in the snow", size=(48, 32), num_frames=5, steps=3, seed=7)
    b = pipe.generate("a red fox in the snow", size=(48, 32), num_frames=5, steps=3, seed=7)
    c = pipe.generate("a red fox in the snow", size=(48, 32), num_frames=5, steps=3, seed=8)
    assert a.shape == (5, 32, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 1  # not a constant image


def test_prompt_and_guidance_change_the_video(pipe):
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=1)
    base = pipe.generate("a cat", **kw)
    assert not np.array_equal(base, pipe.generate("a dog on a beach", **kw))
    assert not np.array_equal(base, pipe.generate("a cat", guidance=1.0, **kw))


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_every_solver_runs(pipe, solver):
    frames = pipe.generate("waves", size=(32, 32), num_frames=1, steps=2, seed=0, solver=solver)
    assert frames.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("options", [dict(engine="reference"), dict(cfg_batch=False), dict(cfg_batch=True)],
                         ids=["reference", "executor-separate", "executor-batched"])
def test_denoise_loop_matches_a_hand_written_cfg_loop(pipe, options):
    """The pipeline's loop is the official one: u + g (c - u), then the solver step.

    Run separately, the CFG branches are bit-identical to calling the DiT by hand. Batched, they
    go through batch-2 GEMMs whose fp32 summation order may differ in the last bit.
    """
    from wan_engine.reference.schedulers import make_solver

    if options.get("cfg_batch", False) is False:
        pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", **options)
    req = pipe.make_request("a boat", size=(32, 32), num_frames=5, steps=3, guidance=4.0, seed=5)
    ctx, ctx_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
    with torch.inference_mode():
        got = pipe.denoise(req, ctx, ctx_null)
        x = pipe.initial_noise(req)
        solver = make_solver("unipc", 3, req.shift)
        for i, t in enumerate(solver.timesteps):
            c = pipe.dit(x, t[None], ctx)
            u = pipe.dit(x, t[None], ctx_null)
            x = solver.step(u + 4.0 * (c - u), i, x)
    if options.get("cfg_batch", False):
        # fp32 with a few ulps of GEMM-order noise per step, amplified by 3 solver steps.
        assert ((got - x).norm() / x.norm()).item() <= 1e-5
    else:
        assert torch.equal(got, x)


def test_engines_are_wired(pipe):
    from wan_engine.executor import WanExecutor
    from wan_engine.reference.dit import WanDiT

    assert isinstance(pipe.dit, WanExecutor) and pipe.dit.engine_config.cfg_batch  # the defaults
    assert pipe.dit.ops.backend == "torch"  # CPU: no interpreted Triton by default
    ref = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="reference")
    assert isinstance(ref.dit, WanDiT)
    custom = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", attention="math", cfg_batch=False)
    assert custom.dit.ops.attention.name == "math" and not custom.dit.engine_config.cfg_batch


@pytest.mark.parametrize("options, match", [
    (dict(engine="fast"), "engine must be one of executor, reference"),
    (dict(attention="flash"), "attention must be one of"),
    (dict(ops="cuda"), "ops must be one of auto, triton, torch"),
    (dict(cfg_batch="yes"), "cfg_batch must be True or False"),
])
def test_bad_engine_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", **options)


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=(40, 32)), "multiples of 16"),
    (dict(size=(32, 0)), "multiples of 16"),
    (dict(num_frames=8), "4n\\+1"),
    (dict(num_frames=0), "4n\\+1"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(guidance=-1.0), "guidance must be >= 0"),
    (dict(shift=0.0), "shift must be > 0"),
    (dict(solver="ddim"), "unknown solver 'ddim'"),
    (dict(seed=-3), "seed"),
])
def test_bad_requests_are_refused(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe.generate("a cat", **kwargs)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="neither an existing model directory nor a preset"):
        wan_engine.WanPipeline.from_pretrained("t2v-7B")


def test_long_prompt_is_truncated_with_a_warning(pipe):
    with pytest.warns(UserWarning, match="truncat"):
        pipe.generate("word " * 400, size=(32, 32), num_frames=1, steps=1, seed=0)


def test_both_checkpoint_layouts_give_the_same_video(tmp_path):
    tiny = get_preset("tiny")
    kw = dict(size=(32, 32), num_frames=5, steps=2, seed=3)
    videos = [wan_engine.WanPipeline.from_pretrained(str(p), device="cpu").generate("a lighthouse", **kw)
              for p in (write_original(tmp_path / "o", tiny, seed=9), write_diffusers(tmp_path / "d", tiny, seed=9))]
    assert np.array_equal(*videos)


def test_cli_writes_a_playable_mp4(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    rc = cli_main(["generate", "--model", "tiny", "--prompt", "a tiny robot", "--output", str(out),
                   "--size", "48x32", "--frames", "9", "--steps", "2", "--seed", "4"])
    assert rc == 0
    frames = read_video(out)
    assert frames.shape == (9, 32, 48, 3)
    printed = capsys.readouterr().out
    for stage in ("wrote", "text_encoding", "denoising", "vae_decode"):
        assert stage in printed


@pytest.mark.parametrize("engine_args", [["--engine", "reference"], ["--no-cfg-batch", "--attention", "math"]])
def test_cli_engine_options(tmp_path, engine_args):
    out = tmp_path / "clip.mp4"
    rc = cli_main(["generate", "--prompt", "a kite", "--output", str(out), "--size", "32x32", "--frames", "1",
                   "--steps", "1", "--seed", "0", *engine_args])
    assert rc == 0 and read_video(out).shape == (1, 32, 32, 3)


@pytest.mark.parametrize("args, match", [
    (["--attention", "fa3"], "attention backend 'fa3' requested but"),
    (["--size", "50x32"], "multiples of 16"),
    (["--frames", "10"], "4n\\+1"),
    (["--steps", "0"], "steps"),
    (["--guidance", "-2"], "guidance"),
    (["--solver", "heun"], "unknown solver"),
    (["--model", "no-such-model"], "neither an existing model directory nor a preset"),
])
def test_cli_refuses_bad_input_with_a_message(tmp_path, capsys, args, match):
    out = tmp_path / "x.mp4"
    rc = cli_main(["generate", "--prompt", "p", "--output", str(out), *args])
    assert rc == 2
    assert pytest.importorskip("re").search(match, capsys.readouterr().err)
    assert not out.exists()


def test_cli_info_and_module_entry_point(tmp_path):
    root = write_original(tmp_path / "m", get_preset("tiny"))
    result = subprocess.run([sys.executable, "-m", "wan_engine.cli", "info", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "layout: original" in result.stdout and "text_dim=32" in result.stdout


def test_t5_cpu_runs_the_text_encoder_in_bf16_on_the_cpu():
    """On a CPU pipeline t5_cpu still changes something real: the encoder is kept in bf16 (the
    5.7B umT5 needs it for host memory), so the video moves by bf16 text-embedding rounding only."""
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=2)
    base = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    t5_cpu = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", t5_cpu=True)
    assert base.text_encoder.dtype == torch.float32
    assert t5_cpu.text_encoder.dtype == torch.bfloat16 and t5_cpu.text_encoder.device.type == "cpu"
    a, b = base.generate("x", **kw), t5_cpu.generate("x", **kw)
    assert not np.array_equal(a, b)
    assert psnr(b, a) > 40  # bf16 text embeddings only (measured 55 dB on this random tiny model)


def test_offload_plan_keeps_each_component_on_the_gpu_only_for_its_stage():
    from wan_engine.placement import CPU, stage_placement

    gpu = torch.device("cuda", 0)  # a device value; nothing runs on it here
    plan = {stage: stage_placement(stage, device=gpu, text_device=gpu, offload=True)
            for stage in ("load", "text_encoding", "image_encoding", "denoising", "vae_decode")}
    assert [(p.text_encoder, p.image_encoder, p.dit) for p in plan.values()] == [
        (CPU, CPU, CPU), (gpu, CPU, CPU), (CPU, gpu, CPU), (CPU, CPU, gpu), (CPU, CPU, CPU)]
    t5_cpu = stage_placement("text_encoding", device=gpu, text_device=CPU, offload=True)
    assert (t5_cpu.text_encoder, t5_cpu.dit) == (CPU, CPU)
    resident = {stage_placement(s, device=gpu, text_device=gpu, offload=False) for s in plan}
    assert resident == {stage_placement("load", device=gpu, text_device=gpu, offload=False)}  # nothing moves
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_placement("decode", device=gpu, text_device=gpu, offload=True)


def test_offload_on_the_cpu_gives_the_same_video_and_keeps_everything_home():
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=2)
    base = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu").generate("x", **kw)
    off = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", offload=True)
    assert np.array_equal(off.generate("x", **kw), base)
    from wan_engine.placement import module_device

    assert module_device(off.dit).type == module_device(off.text_encoder.model).type == "cpu"


def test_a_module_moved_inside_inference_mode_keeps_normal_tensors():
    """`run` places the DiT inside inference mode; tensors made there are inference tensors, and a
    later in-place LoRA merge on them outside it would raise. The meta device stands in for CUDA."""
    from wan_engine.placement import place

    module = torch.nn.Linear(4, 4)
    module.register_buffer("fused", torch.ones(3))
    with torch.inference_mode():
        assert place(module, torch.device("meta"))
    assert not module.weight.is_inference() and not module.fused.is_inference()
    module.fused[:2].copy_(torch.zeros(2, device="meta"))  # what the merge does; allowed


def test_a_model_config_builds_a_pipeline_with_random_weights():
    config = get_preset("tiny").replace(name="tiny-copy")
    pipe = wan_engine.WanPipeline.from_pretrained(config, device="cpu")
    ref = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=1)
    assert pipe.config.name == "tiny-copy" and np.array_equal(pipe.generate("x", **kw), ref.generate("x", **kw))


def test_empty_negative_prompt_means_the_official_default(pipe):
    default = pipe.make_request("a cat", seed=0)
    assert default.negative_prompt == pipe.config.sample.negative_prompt
    assert pipe.make_request("a cat", negative_prompt="", seed=0).negative_prompt == default.negative_prompt
    assert pipe.make_request("a cat", negative_prompt="blurry", seed=0).negative_prompt == "blurry"
