"""Image-to-video and first-last-frame-to-video: the conditioning against diffusers'
`WanImageToVideoPipeline` and the official rules, the executor against the reference, step
caching, and every refusal of bad images (each names the option).

All in fp32 on the CPU with the tiny-i2v / tiny-flf2v presets (a 56 x 56 CLIP tower, 17 rows per
image). Tolerances: the image features, the conditioning latents and one DiT forward are the same
math as diffusers in another op order (fp32 eps 1.2e-7 over a few dozen layers): 1e-5 relative,
measured about 1e-7 to 1e-6. The executor against the reference uses the executor's usual fp32
bound (test_executor.py: 1e-5 relative on the velocity).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_image import without_prompt_cleaning
from wan_engine.cache import CacheConfig
from wan_engine.pipelines.image_condition import ConditionImage, crop_to_aspect, frame_mask, output_size, read_image
from wan_engine.pipelines.image_prompt import image_prompt
from wan_engine.pipelines.t2v import WanPipeline

RTOL = 1e-5
PROMPT = "a paper boat drifting on a pond"


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth image with some texture (a random one would alias through every resize)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(6 * x + 3 * y + p) for p in rng.uniform(0, 6, 3)]
    image = 0.5 + 0.4 * np.stack(channels, -1) + 0.05 * rng.standard_normal((height, width, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pipes():
    return {name: WanPipeline.from_pretrained(name) for name in ("tiny-i2v", "tiny-flf2v")}


# -- the official size rule and mask --------------------------------------------------------------

@pytest.mark.parametrize("image_wh,area,expected", [
    ((1280, 720), 832 * 480, (832, 464)),  # sqrt(399360 * 0.5625) = 474 -> 59 -> 58 latent rows
    ((1280, 720), 1280 * 720, (1280, 720)),
    ((480, 832), 832 * 480, (480, 832)),  # portrait keeps its orientation
    ((1000, 1000), 832 * 480, (624, 624)),  # sqrt(399360) = 631.9 -> 78 latent rows and columns
])
def test_output_size_follows_the_official_rule(image_wh, area, expected):
    w, h = image_wh
    assert output_size(ConditionImage(torch.zeros(3, h, w), "test"), area) == expected


@pytest.mark.parametrize("last", [False, True])
def test_frame_mask_marks_the_given_frames(last):
    mask = frame_mask(9, 2, 3, last)  # 9 frames -> 3 latent frames of 4 mask channels
    assert mask.shape == (4, 3, 2, 3)
    assert mask[:, 0].eq(1).all()  # frame 0, repeated over the 4 channels of latent frame 0
    assert mask[:, 1].eq(0).all()
    # Latent frame 2 holds frames 5..8: only frame 8 is given (the last), in mask channel 3.
    assert mask[:, 2, 0, 0].tolist() == ([0, 0, 0, 1] if last else [0, 0, 0, 0])


# -- the chain against diffusers -----------------------------------------------------------------

def _diffusers_side(pipe, tmp_path):
    """diffusers' WanImageToVideoPipeline over our VAE and a transformers CLIPVisionModel whose
    weights our pipeline then loads."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from wan_engine.assembly import load_image_encoder
    from wan_engine.bench.suites.vae import diffusers_vae

    enc = pipe.config.image_encoder
    clip_config = transformers.CLIPVisionConfig(
        hidden_size=enc.dim, intermediate_size=enc.mlp_dim, num_attention_heads=enc.num_heads,
        num_hidden_layers=enc.num_layers, image_size=enc.image_size, patch_size=enc.patch_size,
        hidden_act="gelu", layer_norm_eps=enc.eps)
    torch.manual_seed(3)
    clip = transformers.CLIPVisionModel(clip_config).eval()
    clip.save_pretrained(tmp_path / "image_encoder")
    pipe.image_encoder = load_image_encoder(tmp_path / "image_encoder")
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": enc.image_size}, crop_size={"height": enc.image_size, "width": enc.image_size},
        image_mean=list(enc.mean), image_std=list(enc.std), resample=3)
    vae = diffusers_vae(pipe.vae.config, pipe.vae.state_dict(), torch.device("cpu"))
    return diffusers.WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=None,
                                             image_processor=processor, image_encoder=clip)


@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-flf2v"])
def test_the_conditioning_matches_diffusers_image_to_video(name, tmp_path):
    """Image features, the VAE latents of the conditioning video, the mask and the initial noise,
    each against diffusers' own code on the same weights and pixels."""
    from PIL import Image

    from wan_engine.pipelines.image_condition import condition_inputs, conditioning_video

    pipe = WanPipeline.from_pretrained(name)  # its own: the image encoder is replaced below
    theirs = _diffusers_side(pipe, tmp_path)
    size = pipe.config.image_encoder.image_size  # the CLIP size: diffusers' processor then resizes nothing
    first, last = rgb(size, size, 1), (rgb(size, size, 2) if name == "tiny-flf2v" else None)
    flf = last is not None
    req = pipe.make_request(PROMPT, size=(48, 48), num_frames=9, seed=5, image=first,
                            last_image=last)
    clip_fea, y = condition_inputs(req.image, req.num_frames, pipe.vae, pipe.image_encoder, pipe.device, pipe.dtype)

    with torch.no_grad():
        expected_clip = theirs.encode_image([Image.fromarray(first)] + ([Image.fromarray(last)] if flf else []),
                                            torch.device("cpu"))
    assert expected_clip.shape == (2 if flf else 1, pipe.config.image_encoder.tokens, pipe.config.image_encoder.dim)
    err = rel_l2(clip_fea, expected_clip.reshape(1, -1, expected_clip.shape[-1]))
    print(f"{name}: image features rel L2 {err:.2e}")
    assert err <= RTOL

    # diffusers takes the frames already resized; give it the official bicubic resize.
    video = conditioning_video(req.image.first, req.image.last, req.num_frames, req.width, req.height)
    frames = (video[:, :, 0], video[:, :, -1] if flf else None)
    generator = torch.Generator().manual_seed(req.seed)
    with torch.no_grad():
        noise, condition = theirs.prepare_latents(
            frames[0], 1, 16, req.height, req.width, req.num_frames, torch.float32, torch.device("cpu"),
            generator, last_image=frames[1])
    assert condition.shape == y.shape == (1, 20, 3, req.height // 8, req.width // 8)
    assert torch.equal(y[:, :4], condition[:, :4])  # the mask, exactly
    err = rel_l2(y[:, 4:], condition[:, 4:])
    print(f"{name}: conditioning latents rel L2 {err:.2e}")
    assert err <= RTOL
    assert torch.equal(pipe.initial_noise(req), noise)


@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-flf2v"])
def test_one_conditioned_forward_matches_diffusers_transformer(pipes, name):
    """The executor with the image features and y, as the runner passes them, against diffusers'
    WanTransformer3DModel on the same inputs (`encoder_hidden_states_image`, channels concatenated)."""
    pytest.importorskip("diffusers")
    from wan_engine.bench.suites.dit import diffusers_transformer
    from wan_engine.engine_config import EngineConfig
    from wan_engine.executor import build_executor
    from wan_engine.loading.random_init import random_state_dict
    from wan_engine.reference.dit import WanDiT

    cfg = pipes[name].config.dit
    reference = WanDiT(cfg).eval()
    reference.load_state_dict(random_state_dict(reference, seed=4))
    theirs = diffusers_transformer(cfg, reference.state_dict(), torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    tokens = 2 * cfg.image_tokens if cfg.model_type == "flf2v" else cfg.image_tokens
    x, y = torch.randn(1, 16, 3, 6, 4, generator=gen), torch.randn(1, 20, 3, 6, 4, generator=gen)
    clip = torch.randn(1, tokens, cfg.image_dim, generator=gen)
    context = torch.randn(1, 5, cfg.text_dim, generator=gen)
    t = torch.tensor([700.0])
    executor = build_executor(reference, EngineConfig(ops="torch"))
    ours = executor.predict(x, t, executor.prepare_text(context, clip), y=y)
    pairs = clip.reshape(2, cfg.image_tokens, cfg.image_dim) if cfg.model_type == "flf2v" else clip
    with torch.no_grad():
        expected = theirs(torch.cat([x, y], 1), t, torch.nn.functional.pad(context, (0, 0, 0, cfg.text_len - 5)),
                          encoder_hidden_states_image=pairs, return_dict=False)[0]
    err = rel_l2(ours, expected)
    print(f"{name}: velocity rel L2 {err:.2e}")
    assert err <= 1e-4  # diffusers' fp32 sinusoid and RoPE (test_reference_dit.py: measured ~4e-6)


# -- the pipeline ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cfg", [("tiny-i2v", True), ("tiny-flf2v", True), ("tiny-i2v", False)],
                         ids=["i2v", "flf2v", "i2v-no-cfg"])
def test_the_executor_pipeline_matches_the_reference_pipeline(pipes, name, cfg):
    reference = WanPipeline.from_pretrained(name, engine="reference")
    kw = dict(size=(48, 48), num_frames=9, steps=3, seed=2, image=rgb(40, 64, 1), cfg=cfg)
    if name == "tiny-flf2v":
        kw["last_image"] = rgb(40, 64, 2)
    fast = pipes[name].run(PROMPT, **kw)
    slow = reference.run(PROMPT, **kw)
    assert fast.frames.shape == slow.frames.shape == (9, 32, 48, 3)  # 40x64 in a 48x48 area: 4 x 6 latents
    diff = np.abs(fast.frames.astype(int) - slow.frames.astype(int))
    assert diff.max() <= 1, diff.max()  # fp32 summation order only: at most one uint8 level
    assert "image_encoding" in fast.timings


def test_the_first_frame_steers_the_video(pipes):
    """Another image gives another video (the conditioning reaches the DiT), the same image the same."""
    pipe = pipes["tiny-i2v"]
    kw = dict(size=(48, 48), num_frames=5, steps=2, seed=0)
    a = pipe.generate(PROMPT, image=rgb(48, 48, 1), **kw)
    b = pipe.generate(PROMPT, image=rgb(48, 48, 1), **kw)
    c = pipe.generate(PROMPT, image=rgb(48, 48, 7), **kw)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_i2v_step_cache_takes_the_published_i2v_coefficients(pipes):
    """TeaCache with the published I2V-14B-480p polynomial runs on an i2v model; threshold 0 gives the
    uncached video bit for bit, a large one reuses steps."""
    pipe = pipes["tiny-i2v"]
    kw = dict(size=(48, 48), num_frames=5, steps=6, seed=0, image=rgb(48, 48, 1))
    plain = pipe.run(PROMPT, cache=None, **kw)
    exact = pipe.run(PROMPT, cache=CacheConfig.parse("teacache:0", calibration="i2v-14B-480p"), **kw)
    loose = pipe.run(PROMPT, cache=CacheConfig.parse("teacache:50", calibration="i2v-14B-480p"), **kw)
    assert np.array_equal(plain.frames, exact.frames)
    assert exact.cache.calibration == loose.cache.calibration
    assert sum(loose.cache.counts()) < 2 * 6, loose.cache.summary()
    assert not np.array_equal(plain.frames, loose.frames)


def test_i2v_presets_bring_the_published_calibration():
    from wan_engine.assembly.pipeline import model_calibration

    for name in ("i2v-14B-480p", "i2v-14B-720p"):
        assert model_calibration(None, name).teacache_coefficients("plain") is not None


# -- images: conversions and refusals ------------------------------------------------------------

def _save(tmp_path, name: str, array: np.ndarray, mode: str | None = None):
    from PIL import Image

    path = tmp_path / name
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


@pytest.mark.parametrize("mode,expected", [("RGBA", "alpha channel is dropped"), ("L", "grayscale -> RGB"),
                                           ("P", "palette -> RGB")])
def test_rgba_grayscale_and_palette_images_are_converted_and_said_so(tmp_path, mode, expected):
    from PIL import Image

    path = _save(tmp_path, f"x_{mode}.png", rgb(24, 24), mode)
    image = read_image(path, "image")
    assert expected in image.conversion
    direct = np.array(Image.open(path).convert("RGB"))
    assert torch.equal(image.pixels, torch.from_numpy(direct).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5))
    prompt = image_prompt(path, None, 48 * 48, "i2v")
    assert any(expected in note for note in prompt.conversions())


def test_an_rgb_image_is_read_as_the_official_to_tensor_range(tmp_path):
    array = rgb(20, 30)
    image = read_image(_save(tmp_path, "x.png", array), "image")
    assert image.conversion is None and (image.width, image.height) == (30, 20)
    assert torch.allclose(image.pixels, torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)


def test_a_last_image_of_another_shape_is_centre_cropped_to_the_first_images_aspect():
    first = ConditionImage(torch.zeros(3, 40, 80), "first")
    last = ConditionImage(torch.arange(3 * 60 * 60, dtype=torch.float32).reshape(3, 60, 60), "last")
    cropped = crop_to_aspect(last, first)
    assert (cropped.width, cropped.height) == (60, 30)
    assert torch.equal(cropped.pixels, last.pixels[:, 15:45, :])
    assert "centre-cropped from 60x60 to 60x30" in cropped.conversion
    assert crop_to_aspect(first, first) is first


@pytest.mark.parametrize("args,model_type,message", [
    (dict(image=None, last_image="L"), "flf2v", "last_image needs image"),
    (dict(image="I", last_image=None), "t2v", "image: this is a text-to-video model"),
    (dict(image=None, last_image=None), "i2v", "image is required"),
    (dict(image="I", last_image="L"), "i2v", "last_image: an i2v model takes the first frame only"),
    (dict(image="I", last_image=None), "flf2v", "last_image is required"),
])
def test_missing_and_misplaced_images_are_refused_by_name(tmp_path, args, model_type, message):
    files = {"I": _save(tmp_path, "i.png", rgb(48, 48)), "L": _save(tmp_path, "l.png", rgb(48, 48))}
    args = {k: None if v is None else files[v] for k, v in args.items()}
    with pytest.raises(ValueError, match=message):
        image_prompt(args["image"], args["last_image"], 48 * 48, model_type)


def test_unreadable_non_image_and_unsupported_files_are_refused_by_name(tmp_path):
    from PIL import Image

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_save(tmp_path, "whole.png", rgb(64, 64, 3)).read_bytes()[:200])
    sixteen_bit = tmp_path / "deep.png"
    Image.fromarray((rgb(16, 16)[..., 0].astype(np.uint16) * 257)).save(sixteen_bit)
    too_wide = tmp_path / "wide.png"
    Image.new("1", (8193, 2)).save(too_wide)  # a few bytes on disk; the side is read from the header
    cases = [(tmp_path / "missing.png", "no such image file"),
             (text, r"is not a readable image \(not in an image format Pillow reads: PNG, JPEG"),
             (too_wide, "8193x2 is outside the accepted 1..8192 pixels per side"),
             (truncated, "is not a readable image"), (tmp_path, "no such image file"),
             (sixteen_bit, "image mode 'I;16' is not supported"), (42, "must be an image file path")]
    for value, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            read_image(value, "--image")
        assert str(err.value).startswith("--image") and "BytesIO" not in str(err.value)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        read_image(np.zeros((8, 8), np.uint8), "image")


def test_an_image_too_small_for_the_video_is_refused(tmp_path):
    small = _save(tmp_path, "small.png", rgb(20, 20))
    with pytest.raises(ValueError, match=r"image: 20x20 is too small for a 48x48 video \(at least 24x24"):
        image_prompt(small, None, 48 * 48, "i2v")
    image_prompt(_save(tmp_path, "ok.png", rgb(24, 24)), None, 48 * 48, "i2v")  # 2x upscaling is accepted
    with pytest.raises(ValueError, match="leaves no room"):
        image_prompt(_save(tmp_path, "strip.png", rgb(4, 400)), None, 48 * 48, "i2v")


def test_the_pipeline_refuses_images_on_a_text_to_video_model():
    pipe = WanPipeline.from_pretrained("tiny")
    with pytest.raises(ValueError, match="image: this is a text-to-video model"):
        pipe.generate(PROMPT, image=rgb(64, 64), steps=1)


# -- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-flf2v"])
def test_both_layouts_load_identical_i2v_modules(name, tmp_path):
    """The same weights written in the original layout (DiT safetensors, Wan2.1_VAE.pth, the
    official CLIP .pth) and the diffusers one (transformer/, vae/, image_encoder/) load to the same
    modules, and `wan-engine info` describes the conditioning."""
    from checkpoint_factory import write_diffusers, write_original
    from wan_engine.configs import get_preset
    from wan_engine.loading.info import describe_model

    config = get_preset(name)
    roots = write_original(tmp_path / "original", config, seed=3), write_diffusers(tmp_path / "diffusers", config, seed=3)
    pipes = [WanPipeline.from_pretrained(str(root), engine="reference") for root in roots]
    for part in ("dit", "vae", "image_encoder"):
        a, b = (getattr(p, part).state_dict() for p in pipes)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert pipes[0].config.dit == pipes[1].config.dit == config.dit
    assert pipes[0].config.image_encoder == pipes[1].config.image_encoder == config.image_encoder
    assert pipes[0].config.sample == config.sample  # the preset of the same architecture
    for root in roots:
        text = describe_model(root)
        assert f"model: {config.dit.model_type} (" in text
        assert "image encoder" in text and "conditioning:" in text
        frames = "first and last frames" if name == "tiny-flf2v" else "the first frame"
        assert frames in text


# -- the command line -----------------------------------------------------------------------------

def test_cli_writes_an_mp4_from_one_png_and_from_two(tmp_path, capsys):
    from wan_engine.cli import main
    from wan_engine.video import read_video

    first = _save(tmp_path, "first.png", rgb(48, 64, 1), "RGBA")
    last = _save(tmp_path, "last.png", rgb(48, 64, 2))
    common = ["--prompt", PROMPT, "--size", "48x48", "--frames", "5", "--steps", "2", "--seed", "0"]
    for model, images in (("tiny-i2v", ["--image", str(first)]),
                          ("tiny-flf2v", ["--image", str(first), "--last-image", str(last)])):
        out = tmp_path / f"{model}.mp4"
        assert main(["generate", "--model", model, *common, *images, "--output", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "converted --image" in printed and "alpha channel is dropped" in printed
        assert read_video(out).shape[:3] == (5, 32, 48)  # 48x64's aspect ratio in a 48x48 area


@pytest.mark.parametrize("argv,message", [
    (["--model", "tiny-i2v"], "--image is required"),
    (["--model", "tiny-i2v", "--image", "{png}", "--last-image", "{png}"], "--last-image: an i2v model"),
    (["--model", "tiny-flf2v", "--last-image", "{png}"], "--last-image needs --image"),
    (["--model", "tiny-flf2v", "--image", "{png}"], "--last-image is required"),
    (["--model", "tiny", "--image", "{png}"], "--image: this is a text-to-video model"),
    (["--model", "tiny-i2v", "--image", "{txt}"], "--image: .* is not a readable image"),
    (["--model", "tiny-i2v", "--image", "{small}"], "--image: 8x8 is too small"),
    (["--model", "tiny-i2v", "--image", "{deep}"], "--image: image mode 'I;16' is not supported"),
])
def test_cli_refuses_bad_images_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    import re

    from PIL import Image

    from wan_engine.cli import main

    files = {"png": _save(tmp_path, "ok.png", rgb(48, 48)), "small": _save(tmp_path, "small.png", rgb(8, 8)),
             "txt": tmp_path / "notes.txt", "deep": tmp_path / "deep.png"}
    files["txt"].write_text("hello")
    Image.fromarray(rgb(16, 16)[..., 0].astype(np.uint16) * 257).save(files["deep"])

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the images were checked")

    monkeypatch.setattr(WanPipeline, "from_pretrained", no_load)
    argv = [a.format(**files) for a in argv]
    assert main(["generate", "--prompt", PROMPT, "--output", str(tmp_path / "o.mp4"), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_bench_suites_run_image_conditioned_models(tmp_path, capsys):
    """The DiT, step, e2e and cache suites give an i2v/flf2v model its conditioning (the cache suite
    failed: "image is required"), and every row passes against the fp32 reference (the bench exits
    non-zero on a FAIL row or a failed suite)."""
    from wan_engine.cli import main

    for suite, extra in (("dit", []), ("step", []), ("e2e", []), ("cache", ["--steps", "4"])):
        code = main(["bench", "--suite", suite, "--model", "tiny-flf2v", "--device", "cpu", "--repeats", "1",
                     "--warmup", "0", "--out", str(tmp_path / suite), *extra])
        assert code == 0, capsys.readouterr().out[-2000:]


@pytest.mark.parametrize("cache", [None, "magcache:0.3,K=3,retention=0.1"], ids=["uncached", "magcache"])
def test_graph_replays_carry_the_conditioning(pipes, cache):
    """The graphed step (a stand-in capture on the CPU: no graph recorded, a replay re-runs the
    function on its static inputs) takes y through the same static inputs as eager."""
    import contextlib

    from wan_engine.graphs import GraphReplayer

    pipe = pipes["tiny-flf2v"]
    cache = None if cache is None else CacheConfig.parse(cache, calibration="i2v-14B-480p")
    kw = dict(size=(48, 48), num_frames=9, steps=6, seed=4, image=rgb(48, 48, 1), last_image=rgb(48, 48, 2),
              cache=cache)
    eager = pipe.run(PROMPT, **kw)
    pipe.graphs = GraphReplayer("cpu", capture=contextlib.nullcontext)
    try:
        replayed = pipe.run(PROMPT, **kw)
        assert pipe.graphs.replays > 0
    finally:
        pipe.graphs = GraphReplayer("cpu")
    assert np.array_equal(eager.frames, replayed.frames)


@pytest.mark.gpu
def test_i2v_graph_replay_equals_eager_on_the_gpu():
    kw = dict(size=(48, 48), num_frames=9, steps=4, seed=4, image=rgb(48, 48, 1))
    graphed = without_prompt_cleaning(WanPipeline.from_pretrained("tiny-i2v", device="cuda", dtype="bf16"))
    eager = without_prompt_cleaning(WanPipeline.from_pretrained("tiny-i2v", device="cuda", dtype="bf16",
                                                                cuda_graphs=False))
    a, b = graphed.run(PROMPT, **kw), eager.run(PROMPT, **kw)
    assert graphed.graphs.active and graphed.graphs.replays > 0, graphed.graphs.disabled_reason
    assert np.array_equal(a.frames, b.frames)


def test_the_engine_runs_an_i2v_request_from_a_local_image(pipes, tmp_path):
    from wan_engine.engine import Engine, GenerationRequest
    from wan_engine.engine.request import RequestError

    path = _save(tmp_path, "first.png", rgb(48, 48, 1))
    engine = Engine(pipes["tiny-i2v"])
    try:
        result = engine.generate(GenerationRequest(PROMPT, size=(48, 48), num_frames=5, num_inference_steps=2,
                                                   seed=0, image=str(path)))
        direct = pipes["tiny-i2v"].generate(PROMPT, size=(48, 48), num_frames=5, steps=2, seed=0, image=path)
        assert np.array_equal(result.frames, direct)
        with pytest.raises(RequestError, match="image must be the path of an image file"):
            engine.generate(GenerationRequest(PROMPT, image=b"png bytes"))
    finally:
        engine.close()
