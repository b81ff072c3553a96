"""Exports of what an export folder once could not hold: a two-expert model's DiTs (one complete
export per expert, `high_noise/` and `low_noise/`), an i2v DiT without CLIP (Wan2.2 I2V-A14B), TI2V
image-to-video (frame 0 at its own timestep), and DiTs with LoRAs merged (`wan-engine export --lora`). An exported engine's weights are fixed in its
graphs, so a LoRA or a quantization asked of one is refused rather than silently not applied.

Held to test_export.py's bound: a generation through onnxruntime within one level of the executor's.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wan_engine
from wan_engine.cache import CacheConfig
from wan_engine.export.manifest import Manifest, ShapeRange

pytestmark = pytest.mark.onnx_export  # every test here exports (conftest skips them on a torch that cannot)

SHAPES = ShapeRange(batch=(1, 2), frames=(5, 9), height=(32, 64), width=(32, 64))
RANGES = ["--frames", "5-9", "--height", "32-64", "--width", "32-64"]
REQUEST = dict(prompt="a red kite above a grey sea", size=(48, 32), num_frames=9, steps=6, seed=3)


def _lora(path, seed: int, scale: float = 1.0) -> str:
    """A rank-4 LoRA on block 0's first FFN layer of the tiny DiT (dim 32, ffn 64), strong enough
    to change the video."""
    gen = torch.Generator().manual_seed(seed)
    save_file({"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.randn(4, 32, generator=gen) * scale,
               "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.randn(64, 4, generator=gen) * scale}, str(path))
    return str(path)


def _levels(a, b) -> np.ndarray:
    return np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))


@pytest.fixture(scope="module")
def experts_export(tmp_path_factory):
    """tiny-a14b's DiTs exported through the CLI with a LoRA merged into the high-noise expert:
    (export folder, the LoRA file)."""
    from wan_engine.cli import main

    root = tmp_path_factory.mktemp("experts_export")
    lora = _lora(root / "high.safetensors", 1)
    assert main(["export", "--model", "tiny-a14b", "--component", "dit", "--out", str(root / "export" / "dit"),
                 *RANGES, "--high-noise-lora", f"{lora}:0.7"]) == 0
    return root / "export", lora


def test_a_two_expert_dit_exports_as_one_folder_per_expert_with_its_loras(experts_export, capsys):
    from wan_engine.cli import main

    export, lora = experts_export
    high, low = Manifest.load(export / "dit" / "high_noise"), Manifest.load(export / "dit" / "low_noise")
    assert (high.expert, low.expert) == ("high_noise", "low_noise") and high.config == low.config
    digest = hashlib.sha256(open(lora, "rb").read()).hexdigest()
    assert high.loras == ({"file": "high.safetensors", "strength": 0.7, "sha256": digest},) and low.loras == ()
    assert not (export / "dit" / "manifest.json").exists()
    assert main(["info", str(export)]) == 0
    out = capsys.readouterr().out
    assert "dit (high_noise expert): onnx, fp32, model tiny-a14b" in out
    assert "dit (low_noise expert): onnx, fp32, model tiny-a14b" in out
    assert f"LoRAs merged: high.safetensors x0.7 (sha256 {digest[:12]})" in out and "LoRAs merged: none" in out
    assert "step caches: uncached, magcache, fbcache" in out  # TeaCache belongs to one DiT
    assert main(["info", str(export / "dit")]) == 0 and "low_noise expert" in capsys.readouterr().out


# FBCache at 1.0 on this request: both branches compute, both reuse, and disagree at different steps.
@pytest.mark.parametrize("cache", [None, "magcache:0.3,K=3,retention=0.1", "fbcache:1.0"],
                         ids=["uncached", "magcache", "fbcache"])
def test_a_two_expert_generation_through_onnxruntime_is_the_executors(experts_export, cache):
    """Each expert runs its own export: the experts differ (seeded apart) and the high-noise one
    carries the LoRA, so the video matches the executor's only if every step ran the right graphs."""
    export, lora = experts_export
    cache = None if cache is None else CacheConfig.parse(cache, calibration="t2v-A14B")
    executor = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu",
                                                      loras={"high_noise": [f"{lora}:0.7"]})
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine=f"onnx:{export}")
    assert onnx_pipe.low_noise_dit.folder == export / "dit" / "low_noise"
    a, b = executor.run(**REQUEST, cache=cache), onnx_pipe.run(**REQUEST, cache=cache)
    diff = _levels(a, b)
    print(f"two experts, onnxruntime vs executor: max {diff.max()} levels, mean {diff.mean():.5f}")
    assert diff.max() <= 1
    if cache is not None:
        assert a.cache.computed == b.cache.computed and not all(a.cache.computed[0])
    else:  # the LoRA is in the graphs: without it the video is another
        base = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu").run(**REQUEST)
        assert _levels(base, b).max() > 8


def test_an_exported_engine_reads_the_dit_config_and_loads_no_dit_weights(experts_export, tmp_path, monkeypatch):
    """The DiT weights are in the graphs: a model directory run with `--engine onnx:DIR` reads its
    DiT config from the headers and loads neither expert (a 14B pair would be 2 x 28 GB to discard)."""
    from checkpoint_factory import write_two_experts

    from wan_engine.assembly import pipeline as assembly

    export, lora = experts_export
    root = write_two_experts(tmp_path / "m", wan_engine.configs.get_preset("tiny-a14b"), "original")
    expected = wan_engine.WanPipeline.from_pretrained(str(root), device="cpu", loras={"high_noise": [f"{lora}:0.7"]})

    def no_load(*args, **kwargs):
        raise AssertionError("a DiT's weights were loaded for an exported engine")

    monkeypatch.setattr(assembly, "load_dit", no_load)
    monkeypatch.setattr(assembly, "load_low_noise_dit", no_load)
    monkeypatch.setattr(assembly, "random_low_noise_dit", no_load)
    onnx_pipe = wan_engine.WanPipeline.from_pretrained(str(root), device="cpu", engine=f"onnx:{export}")
    assert _levels(expected.run(**REQUEST), onnx_pipe.run(**REQUEST)).max() <= 1
    with pytest.raises(ValueError, match="exported from another model: dim differ"):
        wan_engine.WanPipeline.from_pretrained(wan_engine.configs.get_preset("tiny-a14b").replace(
            dit=wan_engine.configs.get_preset("tiny-a14b").dit.__class__(dim=64, ffn_dim=64, num_heads=2, num_layers=2,
                                                                         text_dim=32)),
            device="cpu", engine=f"onnx:{export}")


def test_export_folders_that_do_not_fit_the_experts_are_refused_by_name(experts_export, tiny_export, tmp_path):
    export, _ = experts_export
    with pytest.raises(ValueError, match="holds a two-expert model's DiT exports \\(tiny-a14b\\); this model has one"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{export}")
    one_dit, _ = tiny_export
    with pytest.raises(ValueError, match="holds one DiT's export; a two-expert model .* runs high_noise/ and "
                                         "low_noise/ exports"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine=f"onnx:{one_dit}")
    swapped = tmp_path / "swapped"
    shutil.copytree(export / "dit" / "high_noise", swapped / "low_noise")
    shutil.copytree(export / "dit" / "low_noise", swapped / "high_noise")
    with pytest.raises(ValueError, match="holds the low_noise expert of a two-expert model \\(tiny-a14b\\); the run "
                                         "needs the high_noise expert's"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine=f"onnx:{swapped}")
    half = tmp_path / "half"
    shutil.copytree(export / "dit" / "high_noise", half / "high_noise")
    with pytest.raises(ValueError, match="half/low_noise is not an export directory"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine=f"onnx:{half}")
    with pytest.raises(ValueError, match="teacache's polynomial belongs to one DiT"):
        wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine=f"onnx:{export}",
                                               cache=CacheConfig.parse("teacache:0.2"))


def test_an_exported_engine_refuses_loras_and_quantization_instead_of_ignoring_them(tiny_export, tmp_path):
    """Its weights are in its graphs: a LoRA merged into the torch copy would change nothing that runs."""
    root, _ = tiny_export
    lora = _lora(tmp_path / "l.safetensors", 2)
    with pytest.raises(ValueError, match="loras: an exported engine's weights are fixed in its graphs; merge the "
                                         "LoRAs when exporting \\(wan-engine export --lora"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{root}", loras=[lora])
    with pytest.raises(ValueError, match="quant='fp8-emulated' needs engine='executor'; an exported engine runs"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{root}", quant="fp8-emulated")
    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{root}")
    assert pipe.lora.reports == ()
    for loras in ([lora], []):
        with pytest.raises(ValueError, match="set_loras: the DiT is an exported engine .* export the model again "
                                             "with the LoRAs"):
            pipe.set_loras(loras)
    from wan_engine.lora import LoraMerger

    with pytest.raises(ValueError, match="a OnnxDiT holds no weights to merge LoRAs into"):
        LoraMerger(pipe.dit).apply([lora])


def test_cli_export_lora_options_are_checked_before_the_load(tmp_path, capsys, monkeypatch):
    from wan_engine.cli import main
    from wan_engine.pipelines.t2v import WanPipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(WanPipeline, "from_pretrained", no_load)
    lora = _lora(tmp_path / "l.safetensors", 3)
    for model, flags, message in (
            ("tiny", ["--component", "vae-decoder", "--lora", lora], "the vae-decoder export takes none"),
            ("tiny-a14b", ["--component", "dit", "--lora", lora], "name the expert of each LoRA"),
            ("tiny", ["--component", "dit", "--high-noise-lora", lora], "use --lora")):
        assert main(["export", "--model", model, *flags, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_one_dit_export_with_a_lora_runs_the_lora_executors_video(tmp_path):
    from wan_engine.export.onnx_export import export_onnx

    lora = _lora(tmp_path / "l.safetensors", 4)
    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", loras=[f"{lora}:0.5"])
    (folder, manifest), = export_onnx(pipe, "dit", tmp_path / "dit", SHAPES, kinds=("full",))  # uncached runs only
    assert folder == tmp_path / "dit" and manifest.expert is None and manifest.loras[0]["strength"] == 0.5
    assert Manifest.load(folder).loras == manifest.loras
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{tmp_path}")
    a, b = pipe.run(**REQUEST), onnx_pipe.run(**REQUEST)
    base = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu").run(**REQUEST)
    assert _levels(a, b).max() <= 1 and _levels(base, b).max() > 8


def test_an_i2v_dit_without_clip_exports_and_generates_as_the_executor(tmp_path):
    """Wan2.2 I2V-A14B: two experts without CLIP, conditioned by the frame mask and the first frame's
    latents alone (in the patches); the text graph takes the text only. (The conditioning encode
    runs in torch: the exported encoder is the CLIP models', tested in test_export.py.)"""
    import onnx
    from test_i2v import rgb

    from wan_engine.export.onnx_export import export_onnx

    pipe = wan_engine.WanPipeline.from_pretrained("tiny-i2v-a14b", device="cpu")
    export_onnx(pipe, "dit", tmp_path / "dit", SHAPES, kinds=("full",))  # uncached runs only
    text_inputs = onnx.load(str(tmp_path / "dit" / "high_noise" / "dit_text_kv.onnx"),
                            load_external_data=False).graph.input
    assert len(text_inputs) == 1  # the context alone
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny-i2v-a14b", device="cpu", engine=f"onnx:{tmp_path}")
    kw = dict(prompt="a paper boat", size=(48, 32), num_frames=9, steps=4, seed=5, image=rgb(32, 48, 1))
    a, b = pipe.run(**kw), onnx_pipe.run(**kw)
    diff = _levels(a, b)
    print(f"i2v without CLIP, two experts: onnxruntime vs executor: max {diff.max()} levels, mean {diff.mean():.5f}")
    assert diff.max() <= 1
    with pytest.raises(ValueError, match="clip_fea is only accepted by i2v/flf2v models with CLIP"):
        onnx_pipe.dit.prepare_text(torch.zeros(1, 4, pipe.config.dit.text_dim), torch.zeros(1, 257, 1280))


def test_a_manifest_from_before_experts_and_loras_still_loads(tiny_export, tmp_path):
    root, _ = tiny_export
    shutil.copytree(root / "dit", tmp_path / "dit")
    path = tmp_path / "dit" / "manifest.json"
    data = json.loads(path.read_text())
    for key in ("expert", "loras"):
        del data[key]
    path.write_text(json.dumps(data))
    manifest = Manifest.load(tmp_path / "dit")
    assert manifest.expert is None and manifest.loras == ()
    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{tmp_path}")
    assert pipe.low_noise_dit is None


def test_ti2v_image_to_video_runs_frame_0_at_its_own_timestep_through_the_export(tmp_path):
    """TI2V-5B's image-to-video denoises every token but latent frame 0 (the image's, at t = 0): the
    export's step graphs take t [B, 2] and frame 0's token count as an input's length, so the same
    graphs run text-to-video (one timestep) and image-to-video at any exported size. The split step
    alone is exported here: uncached runs block 0 then the rest, FBCache chooses between them."""
    from test_i2v import rgb

    from wan_engine.export.info import describe_export
    from wan_engine.export.modules import FIRST_BLOCK_KINDS
    from wan_engine.export.onnx_export import export_onnx

    pipe = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu")
    (folder, manifest), = export_onnx(pipe, "dit", tmp_path / "dit", ShapeRange(batch=(1, 2), frames=(5, 9),
                                      height=(64, 96), width=(64, 96)), kinds=FIRST_BLOCK_KINDS)
    assert manifest.frame0_timestep and "frame 0 at its own timestep" in describe_export(folder)
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu", engine=f"onnx:{tmp_path}")
    kw = dict(prompt="a paper boat", num_frames=9, steps=4, seed=5)
    for size, image in (((96, 64), rgb(64, 96, 1)), ((64, 96), rgb(96, 64, 2)), ((96, 64), None)):
        for cache in (None, CacheConfig.parse("fbcache:1.0")):
            a = pipe.run(**kw, size=size, image=image, cache=cache)
            b = onnx_pipe.run(**kw, size=size, image=image, cache=cache)
            diff = _levels(a, b)
            print(f"ti2v {size} image={image is not None} cache={cache}: max {diff.max()} levels")
            assert diff.max() <= 1
            if cache is not None:
                assert a.cache.computed == b.cache.computed and not all(a.cache.computed[0])
    # An export from before frame 0's own timestep: image-to-video refused before any compute.
    onnx_pipe.dit.frame0_timestep = False
    with pytest.raises(ValueError, match="image-to-video on a TI2V model runs frame 0 at its own timestep, which "
                                         "this export .* predates"):
        onnx_pipe.run(**kw, size=(96, 64), image=rgb(64, 96, 1))
