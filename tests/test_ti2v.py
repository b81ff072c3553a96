"""Wan2.2 TI2V-5B: the `ti2v-5B` preset, its checkpoints (`Wan2.2_VAE.pth` beside a t2v-shaped
DiT of 48 channels, or the diffusers layout), the two-timestep DiT input that image-to-video runs
frame 0 with, the first frame's sizing (official `best_output_size`, Lanczos cover-and-crop), and
the faces (CLI, engine). Fidelity against diffusers' Wan2.2 pipelines is in
test_pipeline_vs_diffusers.py; sequence and CFG parallelism in parallel/test_ti2v_parallel.py.

Bounds: the executor equals the reference to the fp32 executor bound of test_executor.py (1e-5
relative L2: fused ops reorder fp32 sums); runs that take the same path are compared for equality.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random

import numpy as np
import pytest
import torch

import wan_engine
from checkpoint_factory import write_diffusers, write_original
from wan_engine.cache import CacheConfig
from wan_engine.configs import TINY_VAE22, WAN22_VAE, get_preset
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.graphs import GraphReplayer
from wan_engine.loading.errors import CheckpointError
from wan_engine.pipelines.first_frame import best_output_size, cover_and_crop
from wan_engine.pipelines.image_condition import read_image
from wan_engine.pipelines.image_prompt import image_prompt
from wan_engine.reference.dit import token_timesteps
from wan_engine.runner import FirstFrame

RTOL = 1e-5
PROMPT = "a paper boat drifting on a pond"
REQUEST = dict(size=(96, 64), num_frames=9, steps=4, seed=5)


def rel_l2(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def rgb(h, w, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu")


def test_preset_has_the_official_ti2v_5b_values():
    """wan/configs/wan_ti2v_5B.py: dim 3072, ffn 14336, 24 heads, 30 layers, 48 channels in and out,
    the Wan2.2 VAE; 50 steps, shift 5, guidance 5, 121 frames at 1280x704."""
    cfg = get_preset("ti2v-5B")
    d = cfg.dit
    assert (d.dim, d.ffn_dim, d.num_heads, d.num_layers, d.in_dim, d.out_dim) == (3072, 14336, 24, 30, 48, 48)
    assert cfg.vae == WAN22_VAE and cfg.image_encoder is None and cfg.experts is None
    s = cfg.sample
    assert (s.steps, s.shift, s.guidance, s.size, s.num_frames) == (50, 5.0, 5.0, (1280, 704), 121)
    assert d.task == "ti2v" and get_preset("t2v-A14B").dit.task == "t2v" and get_preset("i2v-A14B").dit.task == "i2v"
    with torch.device("meta"):
        params = sum(p.numel() for p in wan_engine.reference.dit.WanDiT(d).parameters())
    assert 4.9e9 < params < 5.1e9  # "5B"


def test_a_dit_and_vae_of_other_latent_channels_are_refused():
    with pytest.raises(ValueError, match="the DiT predicts 16 latent channels, the VAE has 48"):
        get_preset("tiny").replace(vae=TINY_VAE22)


def test_official_output_size_rule():
    """`best_output_size` of wan/utils/utils.py, its float order included, on random images and areas."""
    def official(w, h, dw, dh, area):
        ratio = w / h
        ow = (area * ratio) ** 0.5
        oh = area / ow
        ow1 = int(ow // dw * dw)
        oh1 = int(area / ow1 // dh * dh)
        ratio1 = ow1 / oh1
        oh2 = int(oh // dh * dh)
        ow2 = int(area / oh2 // dw * dw)
        ratio2 = ow2 / oh2
        return (ow1, oh1) if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio) else (ow2, oh2)

    rng = random.Random(0)
    for _ in range(3000):
        w, h = rng.randint(64, 4096), rng.randint(64, 4096)
        area = rng.choice([1280 * 704, 832 * 480, rng.randint(64 * 64, 1920 * 1088)])
        with contextlib.suppress(ZeroDivisionError):
            assert best_output_size(w, h, 32, area) == official(w, h, 32, 32, area), (w, h, area)
    assert best_output_size(1280, 704, 32, 1280 * 704) == (1280, 704)
    with pytest.raises(ValueError, match="leaves no 32-pixel row or column"):
        best_output_size(4000, 10, 32, 64 * 64)


def test_first_frame_is_covered_with_lanczos_and_centre_cropped():
    """Against PIL directly: scale by max(ow/iw, oh/ih), Lanczos, crop the centre (official)."""
    from PIL import Image

    array = rgb(90, 200, seed=1)
    image = read_image(array, "image")
    out = cover_and_crop(image, 96, 64)
    scale = max(96 / 200, 64 / 90)
    pil = Image.fromarray(array).resize((round(200 * scale), round(90 * scale)), Image.LANCZOS)
    left, top = (pil.width - 96) // 2, (pil.height - 64) // 2
    expected = read_image(np.asarray(pil.crop((left, top, left + 96, top + 64))), "x").pixels
    assert torch.equal(out.pixels, expected)
    assert "Lanczos" in out.conversion and cover_and_crop(out, 96, 64) is out


def test_image_prompts_of_a_ti2v_model():
    prompt = image_prompt(rgb(64, 96), None, 96 * 64, "ti2v")
    assert (prompt.width, prompt.height, prompt.last) == (96, 64, None)
    wide = image_prompt(rgb(90, 200), None, 96 * 64, "ti2v")  # kept as read; cropped when encoded
    assert (wide.width, wide.height, wide.first.width, wide.first.height) == (96, 64, 200, 90)
    with pytest.raises(ValueError, match="last_image: a TI2V model .* takes a first frame only"):
        image_prompt(rgb(64, 96), rgb(64, 96), 96 * 64, "ti2v")
    with pytest.raises(ValueError, match="image: 20x20 is too small"):
        image_prompt(rgb(20, 20), None, 96 * 96, "ti2v")


@pytest.mark.parametrize("ops", ["torch", "triton"])
def test_executor_runs_frame0_at_its_own_timestep_as_the_reference(pipe, ops):
    """The executor's two-timestep form (the bulk modulation everywhere, frame 0's rows re-run
    with theirs) against the reference's official per-token modulation; padded (seq_len) too."""
    ref = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu", engine="reference").dit
    ex = build_executor(ref, EngineConfig(dtype="fp32", ops=ops), "cpu")
    x = torch.randn(2, 48, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0.0, 700.0], [0.0, 301.5]])
    context = torch.randn(2, 7, ref.config.text_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for seq_len in (None, 23):
            expected = ref(x, t, context, seq_len=seq_len)
            assert rel_l2(ex(x, t, context, seq_len=seq_len), expected) <= RTOL
        # Frame 0 at t = 0 is not the same forward as every token at t: the test can fail.
        assert rel_l2(ref(x, t[:, 1], context)[:, :, :1], expected[:, :, :1]) > 1e-2
        # The two-timestep form is the official per-token one: equal timesteps are the scalar form.
        same = torch.tensor([[500.0, 500.0], [20.0, 20.0]])
        assert rel_l2(ref(x, same, context), ref(x, same[:, 0], context)) <= RTOL


def test_token_timesteps_are_the_official_per_token_form():
    """`mask[:, ::2, ::2] * t` over 2 latent frames of 2x3 tokens, padded with t to 16 (official)."""
    t = torch.tensor([[0.0, 900.0]])
    expected = torch.tensor([[0.0] * 6 + [900.0] * 10])
    assert torch.equal(token_timesteps(t, 6, 16), expected)


def test_image_to_video_keeps_the_first_frame_latents(pipe):
    req = pipe.make_request(PROMPT, image=rgb(64, 96), **REQUEST)
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        first = pipe.encode_image(req)
        latents = pipe.denoise(req, context, context_null, image=first)
        text_only = pipe.denoise(dataclasses.replace(req, image=None), context, context_null)
    assert isinstance(first, FirstFrame) and first.latents.shape == (1, 48, 1, 4, 6)
    frame = cover_and_crop(req.image.first, req.width, req.height)
    assert torch.equal(first.latents, pipe.vae.encode(frame.pixels[None, :, None]))
    assert torch.equal(latents[:, :, :1], first.latents)
    assert rel_l2(latents[:, :, 1:], text_only[:, :, 1:]) > 1e-2
    assert torch.equal(FirstFrame.timesteps(torch.tensor([7.0, 3.0])), torch.tensor([[0.0, 7.0], [0.0, 3.0]]))


def test_both_modes_through_generate(pipe):
    """Text alone is text-to-video; with an image the video takes the image's aspect ratio within
    the requested area (official best_output_size)."""
    text = pipe.run(PROMPT, **REQUEST)
    image = pipe.run(PROMPT, image=rgb(100, 100), **{**REQUEST, "size": (96, 96)})
    assert text.frames.shape == (9, 64, 96, 3)
    assert image.frames.shape == (9, 96, 96, 3) and "image_encoding" in image.timings


def test_graph_replay_and_first_block_cache_with_an_image(pipe):
    """The stand-in capture replays the two-timestep steps (their own graphs: the replayer keys
    on the inputs' shapes); FBCache reuses steps on them; threshold 0 computes every step and
    equals the uncached run."""
    request = dict(image=rgb(64, 96), **REQUEST)
    eager = pipe.run(PROMPT, **request, cache=None)
    pipe.graphs = GraphReplayer("cpu", capture=contextlib.nullcontext)
    try:
        text = pipe.run(PROMPT, **REQUEST, cache=None)
        replayed = pipe.run(PROMPT, **request, cache=None)
        assert pipe.graphs.captured >= 2 and pipe.graphs.replays > 0
    finally:
        pipe.graphs = GraphReplayer("cpu")
    assert np.array_equal(eager.frames, replayed.frames)
    assert np.array_equal(text.frames, pipe.run(PROMPT, **REQUEST, cache=None).frames)
    assert np.array_equal(pipe.run(PROMPT, **request, cache=CacheConfig("fbcache", 0.0)).frames, eager.frames)
    cached = pipe.run(PROMPT, **request, cache=CacheConfig("fbcache", 1.0))
    assert not all(cached.cache.computed[0])


def test_magcache_takes_the_image_ratios_for_image_requests(pipe, tmp_path):
    """A calibration with `magcache_image` (as MagCache4Wan2.2 publishes for TI2V-5B) gives image
    requests their own ratios: here ratios of 1 (no error accrues: reuse up to K) for text and a
    far-off ratio (every step computes) for images; the published TI2V-5B set is the default."""
    from wan_engine.cache import Calibration

    steps = 6
    ones, far = (1.0,) * steps, (1.0,) + (3.0,) * (steps - 1)
    path = str(Calibration("tiny-ti2v", "test", magcache=(ones, ones), magcache_image=(far, far))
               .save(tmp_path / "ti2v.json"))
    cache = CacheConfig("magcache", 0.5, max_skips=2, retention=0.0, calibration=path)
    request = {**REQUEST, "steps": steps}
    text = pipe.run(PROMPT, cache=cache, **request)
    image = pipe.run(PROMPT, image=rgb(64, 96), cache=cache, **request)
    assert text.cache.computed == ((True, False, False, True, False, False),) * 2
    assert image.cache.computed == ((True,) * steps,) * 2
    assert (text.cache.calibration, image.cache.calibration) == (path, f"{path} (image-request ratios)")
    assert get_preset("ti2v-5B").name == "ti2v-5B" and wan_engine.cache.published("ti2v-5B").magcache_image


def test_checkpoints_load_in_both_layouts_and_give_one_video(tmp_path):
    """`Wan2.2_VAE.pth` beside the DiT (official layout) or a residual diffusers `vae/` is read as
    the Wan2.2 VAE, and the DiT's 48 channels make it a TI2V model: the same weights written in
    both layouts give the same video."""
    config = get_preset("tiny-ti2v")
    original = write_original(tmp_path / "original", config, seed=0)
    assert (original / "Wan2.2_VAE.pth").is_file() and not (original / "Wan2.1_VAE.pth").exists()
    videos = []
    for root in (original, write_diffusers(tmp_path / "diffusers", config, seed=0)):
        loaded = wan_engine.WanPipeline.from_pretrained(str(root), device="cpu")
        assert loaded.config.vae == TINY_VAE22 and loaded.config.dit.task == "ti2v"
        assert loaded.config.sample == config.sample  # the preset of its width and task gives the defaults
        videos.append(loaded.generate(PROMPT, image=rgb(64, 96), **REQUEST))
    file_sd = torch.load(original / "Wan2.2_VAE.pth", weights_only=True)
    assert all(torch.equal(v, file_sd[k]) for k, v in loaded.vae.state_dict().items())
    assert videos[0].shape == (9, 64, 96, 3) and np.array_equal(videos[0], videos[1])


def test_a_wan21_vae_beside_a_ti2v_dit_is_refused_naming_both(tmp_path):
    root = write_original(tmp_path / "m", get_preset("tiny-ti2v"))
    other = write_original(tmp_path / "o", get_preset("tiny"))
    (root / "Wan2.2_VAE.pth").unlink()
    (other / "Wan2.1_VAE.pth").rename(root / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match="the DiT predicts 48 latent channels but the VAE has 16"):
        wan_engine.WanPipeline.from_pretrained(str(root), device="cpu")


def test_cli_ti2v(tmp_path, capsys):
    from PIL import Image

    from wan_engine.cli import main

    png = tmp_path / "first.png"
    Image.fromarray(rgb(64, 96, seed=3)).save(png)
    video = tmp_path / "v.mp4"
    common = ["--model", "tiny-ti2v", "--prompt", "a cat", "--size", "96x64", "--frames", "5", "--steps", "2"]
    assert main(["generate", *common, "--image", str(png), "--output", str(video)]) == 0
    assert video.is_file()
    assert main(["generate", *common, "--output", str(tmp_path / "t.mp4")]) == 0  # text alone
    assert main(["generate", *common, "--image", str(png), "--last-image", str(png),
                 "--output", str(tmp_path / "x.mp4")]) == 2
    assert "--last-image: a TI2V model (Wan2.2 TI2V-5B) takes a first frame only" in capsys.readouterr().err


def test_cli_refuses_a_size_off_the_32_pixel_grid_before_loading(tmp_path, capsys, monkeypatch):
    """A 16-multiple off TI2V's grid used to pass the CLI's checks and be refused only after the
    model load (minutes at 5B): the grid now comes from the checkpoint's headers, preset or folder."""
    from wan_engine.cli import main

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --size was checked")

    monkeypatch.setattr(wan_engine.WanPipeline, "from_pretrained", no_load)
    folder = write_original(tmp_path / "m", get_preset("tiny-ti2v"))
    for model in ("tiny-ti2v", str(folder)):
        assert main(["generate", "--model", model, "--prompt", "p", "--size", "48x32",
                     "--output", str(tmp_path / "v.mp4")]) == 2
        err = capsys.readouterr().err
        assert "size must be positive multiples of 32" in err and "Traceback" not in err
    assert not (tmp_path / "v.mp4").exists()


def test_engine_reports_the_task_and_refuses_a_size_off_the_32_pixel_grid(pipe):
    """The Wan2.2 VAE's stride 16 times the patch 2: sides are multiples of 32 pixels (a multiple of
    16 off that grid failed inside the DiT, naming its latent width)."""
    from wan_engine.engine import Engine, GenerationRequest, RequestError

    assert pipe.config.size_multiple == 32 and get_preset("tiny").size_multiple == 16
    with pytest.raises(ValueError, match="size must be positive multiples of 32 .*got 48x32; e.g. 832x480 or "
                                         "1280x704"):
        pipe.run(PROMPT, size=(48, 32), num_frames=5, steps=1)
    engine = Engine(pipe)
    try:
        assert engine.model_type == "ti2v"
        with pytest.raises(RequestError, match="multiples of 32") as err:
            engine.submit(GenerationRequest(PROMPT, size=(48, 32)))
        assert err.value.field == "size" and engine.queue_depth == 0
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.onnx_export
def test_onnx_exports_of_a_ti2v_model(tmp_path):
    """The DiT and the Wan2.2 VAE's static chunks through ONNX (onnxruntime): text-to-video and
    image-to-video (frame 0 at its own timestep) give the eager video (fp32: a few uint8 levels at
    most, PSNR >= 60 dB)."""
    pytest.importorskip("onnxruntime")
    from wan_engine.cli import main

    for component in ("dit", "vae-decoder"):
        assert main(["export", "--model", "tiny-ti2v", "--component", component, "--out", str(tmp_path / component),
                     "--frames", "5-9", "--height", "64-96", "--width", "64-96"]) == 0
    request = dict(size=(96, 64), num_frames=5, steps=3, seed=2)
    eager = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu").generate(PROMPT, **request)
    onnx = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu", engine=f"onnx:{tmp_path}")
    image_eager = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu").generate(
        PROMPT, image=rgb(64, 96), **request)
    for got, want in ((onnx.generate(PROMPT, **request), eager),
                      (onnx.generate(PROMPT, image=rgb(64, 96), **request), image_eager)):
        mse = np.mean((got.astype(np.float64) - want.astype(np.float64)) ** 2)
        assert mse == 0 or 10 * np.log10(255.0**2 / mse) >= 60.0


def test_info_and_fps_follow_the_task(tmp_path):
    """`wan-engine info` names the task and its conditioning; TI2V-5B's videos are 24 fps
    (official sample_fps): the CLI's default and a server request's `seconds` use it."""
    from wan_engine.loading.info import describe_model
    from wan_engine.serve.schema import parse_create

    text = describe_model(write_original(tmp_path / "m", get_preset("tiny-ti2v")))
    assert "model: ti2v (tiny-ti2v)" in text and "optionally a first frame (--image)" in text
    assert get_preset("ti2v-5B").sample.fps == 24 and get_preset("t2v-A14B").sample.fps == 16
    req, _, fps = parse_create({"prompt": "p", "seconds": "5"}, True, get_preset("ti2v-5B").sample.fps)
    assert (req.num_frames, fps) == (121, 24)
    assert parse_create({"prompt": "p", "seconds": "5"}, True)[0].num_frames == 81


@pytest.mark.gpu
@pytest.mark.parametrize("cache", [None, CacheConfig("fbcache", 1.0)], ids=["uncached", "fbcache"])
def test_image_to_video_graph_replay_equals_eager_on_the_gpu(cache):
    """The two-timestep steps (frame 0's rows re-run inside the captured step) replayed as CUDA
    graphs give the eager video bit for bit: same kernels, same inputs."""
    from gpu_image import without_prompt_cleaning

    def build(graphs):
        return without_prompt_cleaning(wan_engine.WanPipeline.from_pretrained(
            "tiny-ti2v", device="cuda", dtype="bf16", cuda_graphs=graphs))

    graphed, eager = build(True), build(False)
    request = dict(image=rgb(64, 96), **REQUEST)
    a, b = graphed.run(PROMPT, **request, cache=cache), eager.run(PROMPT, **request, cache=cache)
    assert graphed.graphs.active and graphed.graphs.replays > 0, graphed.graphs.disabled_reason
    assert np.array_equal(a.frames, b.frames)


@pytest.mark.gpu
def test_executor_two_timestep_form_on_the_gpu():
    """The Triton kernels on hardware, bf16, frame 0 at t = 0: the executor's error against the fp32
    reference is within twice the reference's own bf16 error (the bound of test_executor.py)."""
    from wan_engine.reference.dit import WanDiT

    ref = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu", engine="reference").dit.cuda()
    ref_bf16 = WanDiT(ref.config, compute_dtype=torch.bfloat16).cuda()
    ref_bf16.load_state_dict(ref.state_dict())
    ex = build_executor(ref, EngineConfig(dtype="bf16"), "cuda")
    x = torch.randn(2, 48, 3, 4, 6, generator=torch.Generator().manual_seed(0)).cuda()
    t = torch.tensor([[0.0, 700.0], [0.0, 301.5]]).cuda()
    context = torch.randn(2, 7, ref.config.text_dim, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        expected = ref(x, t, context)
        ex_err, ref_err = rel_l2(ex(x, t, context), expected), rel_l2(ref_bf16(x, t, context), expected)
    print(f"bf16, frame 0 at t = 0: executor {ex_err:.2e}, reference in bf16 {ref_err:.2e} rel L2")
    assert ex_err <= 2 * ref_err


def test_a_ti2v_server_takes_text_alone_or_a_first_frame(tmp_path):
    """The image is optional on a ti2v server: a text request and one with `input_reference` both
    complete; the second takes the image's aspect ratio; `seconds` counts 24 fps; a last frame is a
    422 naming the field."""
    import io

    import httpx
    from PIL import Image

    from serve_harness import ServerProcess, wait_for_status

    buffer = io.BytesIO()
    Image.fromarray(rgb(64, 96, seed=4)).save(buffer, format="PNG")
    form = {"prompt": PROMPT, "size": "96x64", "num_inference_steps": "2"}
    with ServerProcess(tmp_path, "--model", "tiny-ti2v", "--no-warmup") as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        text = client.post("/v1/videos", data={**form, "num_frames": "5"})
        image = client.post("/v1/videos", data={**form, "seconds": "0.5", "size": "64x64"},
                            files={"input_reference": ("f.png", buffer.getvalue(), "image/png")})
        last = client.post("/v1/videos", data={**form, "num_frames": "5"},
                           files={"input_reference": ("f.png", buffer.getvalue(), "image/png"),
                                  "last_reference": ("l.png", buffer.getvalue(), "image/png")})
        assert text.status_code == image.status_code == 200, (text.text, image.text)
        assert last.status_code == 422 and "takes a first frame only" in last.text
        job = image.json()
        assert job["input_reference"] == "96x64" and job["num_frames"] == 13 and job["fps"] == 24
        for created in (text, image):
            assert wait_for_status(client, created.json()["id"])["status"] == "completed"
