"""Wan2.2 I2V-A14B: two experts conditioned by the image latents alone (no CLIP, 36 input channels),
held to a hand-written copy of Wan2.2's `image2video.py` loop and to diffusers' transformer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import wan_engine
from checkpoint_factory import write_two_experts
from test_experts import _components
from wan_engine.configs import get_preset
from wan_engine.reference.schedulers import make_solver


def _image(seed: int = 0, side: int = 64) -> np.ndarray:
    return (np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def i2v_reference():
    return wan_engine.WanPipeline.from_pretrained("tiny-i2v-a14b", device="cpu", engine="reference")


def test_published_i2v_a14b_defaults():
    a14b = get_preset("i2v-A14B")
    s = a14b.sample
    # wan/configs/wan_i2v_A14B.py: boundary 0.900, sample_guide_scale (3.5, 3.5), shift 5, 40 steps, no CLIP.
    assert (s.guidance, s.low_noise_guidance, s.shift, s.steps, s.size) == (3.5, 3.5, 5.0, 40, (1280, 720))
    assert a14b.experts.boundary == 0.9 and a14b.image_encoder is None
    assert (a14b.dit.model_type, a14b.dit.in_dim, a14b.dit.clip, a14b.dit.uses_clip) == ("i2v", 36, False, False)
    assert a14b.dit.dim == 5120 and a14b.dit.num_layers == 40


@pytest.mark.parametrize("engine", ["reference", "executor-separate", "executor-batched"])
def test_i2v_a14b_loop_is_wan22s_image2video_loop(i2v_reference, engine):
    """Wan2.2's `WanI2V.generate`: the expert by `t >= 900`, its guidance, y (mask + image latents)
    concatenated on channels for both branches, no CLIP features."""
    pipe = i2v_reference if engine == "reference" else wan_engine.WanPipeline.from_pretrained(
        "tiny-i2v-a14b", device="cpu", cfg_batch=engine == "executor-batched")
    req = pipe.make_request("a cat turns", size=(32, 32), num_frames=5, steps=6, seed=2, image=_image())
    assert pipe.image_encoder is None and (req.guidance, req.low_noise_guidance) == (3.5, 2.5)
    ctx, ctx_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
    with torch.inference_mode():
        image = pipe.encode_image(req)
        assert image.clip_fea is None and image.y.shape == (1, 20, 2, 4, 4)
        got = pipe.denoise(req, ctx, ctx_null, image=image)
        x = pipe.initial_noise(req)
        solver = make_solver(req.solver, req.steps, req.shift)
        for i, t in enumerate(solver.timesteps):
            high = t.item() >= 900
            dit, g = (pipe.dit, req.guidance) if high else (pipe.low_noise_dit, req.low_noise_guidance)
            c, u = dit(x, t[None], ctx, y=image.y), dit(x, t[None], ctx_null, y=image.y)
            x = solver.step(u + g * (c - u), i, x)
    assert 0 < sum(int(t) >= 900 for t in solver.timesteps) < req.steps  # both experts run
    if engine == "executor-batched":
        assert ((got - x).norm() / x.norm()).item() <= 1e-5
    else:
        assert torch.equal(got, x)


def test_a_dit_without_clip_matches_diffusers_transformer(i2v_reference):
    """One forward of the no-CLIP i2v DiT (36 input channels, text cross-attention only) against
    diffusers' WanTransformer3DModel without an image embedder (Wan2.2 I2V-A14B's transformer)."""
    pytest.importorskip("diffusers")
    from wan_engine.bench.suites.dit import diffusers_transformer

    cfg = i2v_reference.config.dit
    theirs = diffusers_transformer(cfg, i2v_reference.dit.state_dict(), torch.float32, torch.device("cpu"))
    assert theirs.condition_embedder.image_embedder is None
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 16, 3, 6, 4, generator=gen), torch.randn(1, 20, 3, 6, 4, generator=gen)
    context = torch.randn(1, 5, cfg.text_dim, generator=gen)
    t = torch.tensor([700])
    with torch.no_grad():
        ours = i2v_reference.dit(x, t, context, y=y)
        expected = theirs(torch.cat([x, y], 1), t, torch.nn.functional.pad(context, (0, 0, 0, cfg.text_len - 5)),
                          return_dict=False)[0]
    err = ((ours - expected).norm() / expected.norm()).item()
    print(f"no-CLIP i2v DiT vs diffusers: {err:.2e} rel L2")
    assert err <= 1e-4  # diffusers' fp32 sinusoid and RoPE (test_reference_dit.py: measured ~4e-6)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_i2v_a14b_layouts_load_as_the_preset(tmp_path, i2v_reference, layout):
    config = get_preset("tiny-i2v-a14b")
    root = write_two_experts(tmp_path / layout, config, layout, boundary=0.9)
    assert not any(root.glob("models_clip*")) and not (root / "image_encoder").exists()
    pipe = wan_engine.WanPipeline.from_pretrained(str(root), device="cpu", engine="reference")
    assert pipe.config.dit == config.dit and pipe.config.experts == config.experts and pipe.image_encoder is None
    assert pipe.config.name.startswith("tiny-i2v-a14b")
    kw = dict(size=(32, 32), num_frames=5, steps=6, seed=4, image=_image(1))
    assert np.array_equal(pipe.generate("a fox", **kw), i2v_reference.generate("a fox", **kw))


def test_no_clip_models_refuse_clip_features_and_image_encoders(i2v_reference):
    x, y = torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 20, 1, 2, 2)
    with pytest.raises(ValueError, match="an i2v model without CLIP"):
        i2v_reference.dit(x, torch.tensor([1]), torch.zeros(1, 3, 32), clip_fea=torch.zeros(1, 17, 160), y=y)
    parts = {**_components(i2v_reference), "image_encoder": object()}
    with pytest.raises(ValueError, match="image_encoder: an i2v model without CLIP \\(Wan2.2 I2V-A14B\\) takes none"):
        wan_engine.WanPipeline(**parts)
    with pytest.raises(ValueError, match="clip=False .* is for i2v models"):
        get_preset("tiny").dit.__class__(clip=False)
    with pytest.raises(ValueError, match="image is required"):
        i2v_reference.make_request("a cat")


def test_cli_i2v_a14b(tmp_path, capsys):
    from PIL import Image

    from wan_engine.cli import main

    root = write_two_experts(tmp_path / "m", get_preset("tiny-i2v-a14b"), "original")
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "no CLIP features (Wan2.2)" in out and "dit (low)" in out
    png = tmp_path / "first.png"
    Image.fromarray(_image(2)).save(png)
    video = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(root), "--prompt", "a cat", "--image", str(png), "--output", str(video),
                 "--size", "32x32", "--frames", "5", "--steps", "2", "--seed", "1"]) == 0
    assert video.is_file()


def test_magcache_on_i2v_a14b_caches_only_the_low_noise_steps(tmp_path):
    """MagCache4Wan2.2's "i2v" rule for I2V-A14B: every high-noise step computes; with ratios of 1
    (no error accrues) the low-noise steps after the first reuse up to K in a row."""
    from wan_engine.cache import CacheConfig, Calibration

    pipe = wan_engine.WanPipeline.from_pretrained("tiny-i2v-a14b", device="cpu")
    kw = dict(size=(32, 32), num_frames=5, steps=8, seed=2, image=_image())
    ones = (1.0,) * kw["steps"]
    path = str(Calibration("tiny-i2v-a14b", "test", magcache=(ones, ones)).save(tmp_path / "ones.json"))
    result = pipe.run("a cat turns", cache=CacheConfig("magcache", 0.5, max_skips=2, retention=0.0,
                                                       calibration=path), **kw)
    switch = pipe.config.experts.first_low_noise_step(make_solver("unipc", kw["steps"], pipe.config.sample.shift)
                                                      .timesteps)
    assert 0 < switch < kw["steps"] - 3
    low = [True] + [(i % 3) == 0 for i in range(1, kw["steps"] - switch)]  # C r r C r r ...
    assert result.cache.computed == (tuple([True] * switch + low),) * 2
