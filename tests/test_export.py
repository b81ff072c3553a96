"""ONNX export of the DiT and the VAE decoder chunks, run through onnxruntime against eager; a whole
generation through `--engine onnx:DIR`; directories that do not fit are refused by name; the
TensorRT path (marked `trt`) where TensorRT exists.

fp32 throughout: an exported graph runs the same operations in another runtime, which may order
its sums differently (~1e-7 relative per op); 1e-5 relative L2 is the issue's bound. A whole
generation compounds that over every step: the video is held to 40 dB PSNR and one level.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import onnx
import pytest
import torch

import wan_engine
from gpu_image import without_prompt_cleaning
from wan_engine.cache import CacheConfig
from wan_engine.export.manifest import Manifest, ShapeRange
from wan_engine.executor.model import timestep_features
from wan_engine.export.modules import FIRST_BLOCK_KINDS, DiTStep, TextKVStep, TimeEmbeddingStep, VAEChunk
from wan_engine.export.onnx_export import export_dit, export_onnx
from wan_engine.export.onnx_runtime import OnnxGraph, OnnxVAEEncoder, check_onnxruntime_for_dit
from wan_engine.export.runners import ExportedSteps
from wan_engine.vae.static import decoder_chunks

pytestmark = pytest.mark.onnx_export  # every test here exports (conftest skips them on a torch that cannot)

SHAPES = ShapeRange(batch=(1, 2), frames=(5, 9), height=(32, 64), width=(32, 64))
REQUEST = dict(prompt="a red kite above a grey sea", size=(48, 32), num_frames=9, steps=6, seed=3)


def _rel_l2(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def tiny():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def exported(tiny_export):
    root, shapes = tiny_export  # conftest: the DiT and VAE decoder
    assert shapes == SHAPES
    return root


def test_the_exports_pass_the_checker_and_carry_a_manifest(exported):
    for component in ("dit", "vae-decoder"):
        manifest = Manifest.load(exported / component)
        assert manifest.component == component and manifest.opset == 20 and manifest.versions["onnx"]
        for name in manifest.files.values():
            onnx.checker.check_model(str(exported / component / name))
            inputs = onnx.load(str(exported / component / name), load_external_data=False).graph.input
            assert all(i.type.tensor_type.elem_type != onnx.TensorProto.COMPLEX64 for i in inputs)  # real RoPE


@pytest.mark.parametrize("grid", [(2, 3, 8, 8), (1, 5, 6, 10)], ids=["batch2-3x4x4", "batch1-5x3x5"])
def test_dit_graphs_match_eager_at_two_shapes_from_one_file(tiny, exported, grid):
    b, f, h, w = grid
    dit = tiny.dit
    gen = torch.Generator().manual_seed(f)
    x = torch.randn(b, 16, f, h, w, generator=gen)
    t = torch.tensor([640.0, 210.0][:b])
    context = torch.randn(b, dit.config.text_len, dit.config.text_dim, generator=gen)
    patches, rope = dit.tokens_in(x, t)
    k, v = TextKVStep(dit)(context)
    residual = torch.randn(b, patches.shape[1], dit.config.dim, generator=gen)
    manifest = Manifest.load(exported / "dit")
    features = timestep_features(dit.config.freq_dim, t)  # what the step graphs take for t
    step = (features, rope.cos, rope.sin)
    with torch.no_grad():
        after, normed, _ = DiTStep(dit, "first_block")(patches, *step, k, v)
        inputs = {"text_kv": (context,), "time_embedding": (features[:1, 0],), "full": (patches, *step, k, v), "full_residual": (patches, *step, k, v),
                  "reuse": (patches, *step, residual, k, v), "first_block": (patches, *step, k, v),
                  "rest_residual": (after, normed, *step, k, v), "rest_reuse": (after, *step, residual, k, v)}
        cases = {"text_kv": (inputs["text_kv"], (k, v)),
                 "time_embedding": (inputs["time_embedding"], TimeEmbeddingStep(dit)(*inputs["time_embedding"]))}
        for role in manifest.files.keys() - {"text_kv", "time_embedding"}:  # the split step and the reused step
            expected = DiTStep(dit, role)(*inputs[role])
            cases[role] = inputs[role], expected if isinstance(expected, tuple) else (expected,)
    assert set(cases) == set(manifest.files)
    for role, (inputs, expected) in cases.items():
        got = OnnxGraph(exported / "dit" / manifest.files[role])(*inputs)
        errors = [_rel_l2(g, e) for g, e in zip(got, expected)]
        print(f"{role} {grid}: rel L2 {max(errors):.2e}")
        assert len(got) == len(expected) and max(errors) <= 1e-5
    # A whole computed step is block 0 then the rest: the eager whole step, residual included.
    steps = ExportedSteps({role: OnnxGraph(exported / "dit" / name) for role, name in manifest.files.items()},
                          freq_dim=dit.config.freq_dim)
    whole_inputs = (patches, t, rope.cos, rope.sin, k, v)  # t: the runner computes its features
    with torch.no_grad():
        tokens, whole_residual = DiTStep(dit, "full_residual")(*whole_inputs)
    got = (steps.full(*whole_inputs), *steps.full_with_residual(*whole_inputs))
    errors = [_rel_l2(g, e) for g, e in zip(got, (tokens, tokens, whole_residual))]
    print(f"whole step as block 0 + rest {grid}: rel L2 {max(errors):.2e}")
    assert max(errors) <= 1e-5


def test_an_export_with_full_step_graphs_runs_them_and_the_split_one_composes():
    """Exports from before the split step hold "full" and "full_residual": those run when present.
    Otherwise a computed step is block 0 then the rest, its residual the sum of theirs."""
    calls = []

    def graph(role, *outs):
        def run(*inputs):
            calls.append(role)
            return outs
        return run

    x, r0, r1, tokens = (torch.full((1, 2, 3), float(v)) for v in (1, 2, 3, 4))
    args = (x, torch.zeros(1), torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(1))
    older = ExportedSteps({"full": graph("full", tokens), "full_residual": graph("full_residual", tokens, r0)})
    assert torch.equal(older.full(*args), tokens) and older.full_with_residual(*args)[1] is r0
    assert calls == ["full", "full_residual"]
    calls.clear()
    split = ExportedSteps({"first_block": graph("first_block", x, x, r0), "rest_residual": graph("rest", tokens, r1)})
    out, residual = split.full_with_residual(*args)
    assert torch.equal(out, tokens) and torch.equal(residual, r0 + r1) and torch.equal(split.full(*args), tokens)
    assert calls == ["first_block", "rest", "first_block", "rest"]


@pytest.mark.parametrize("hw", [(4, 6), (8, 5)])
def test_vae_chunks_match_eager_at_two_shapes_from_one_file(tiny, exported, hw):
    chunks = decoder_chunks(tiny.vae)
    manifest = Manifest.load(exported / "vae-decoder")
    gen = torch.Generator().manual_seed(hw[0])
    x = torch.randn(1, 16, 1, *hw, generator=gen)
    slots = tuple(torch.randn(s.shape, generator=gen) for s in chunks.slots(1, *hw, torch.float32, "cpu"))
    for role, first in (("first", True), ("steady", False)):
        with torch.no_grad():
            expected = VAEChunk(chunks, first)(x, *slots)
        got = OnnxGraph(exported / "vae-decoder" / manifest.files[role])(x, *slots)
        assert len(got) == len(expected) and max(_rel_l2(g, e) for g, e in zip(got, expected)) <= 1e-5


# FBCache at 1.0 on this request: both branches compute, both reuse, and disagree at different steps.
# TeaCache's signal comes from the time-embedding graph; on the tiny model's random time embedding the
# 1.3B polynomial computes every step, the 14B one reuses steps 1-4.
@pytest.mark.parametrize("cache", [None, "teacache:0.3", "magcache:0.3,K=3,retention=0.1", "fbcache:1.0"],
                         ids=["uncached", "teacache", "magcache", "fbcache"])
def test_a_generation_through_onnxruntime_is_the_executors(tiny, exported, cache):
    calibration = "t2v-14B" if cache and cache.startswith("teacache") else "t2v-1.3B"
    cache = None if cache is None else CacheConfig.parse(cache, calibration=calibration)
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{exported}")
    a, b = tiny.run(**REQUEST, cache=cache), onnx_pipe.run(**REQUEST, cache=cache)
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
    mse = float((diff.astype(np.float64) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    print(f"onnxruntime vs executor: PSNR {psnr:.1f} dB, max {diff.max()} levels")
    assert psnr >= 40 and diff.max() <= 1
    if cache is not None:
        assert a.cache.computed == b.cache.computed and not all(a.cache.computed[0])
    if cache is not None and cache.policy == "teacache":  # its signal: the time graph's e and e0, as eager's
        t = torch.tensor([999.0, 640.0, 20.0])
        for got, expected in zip(onnx_pipe.dit.time_embedding(t), tiny.dit.time_embedding(t)):
            assert got.shape == expected.shape and _rel_l2(got, expected) <= 1e-5


def test_cli_generates_through_an_exported_decoder_and_refuses_decode_options_it_cannot_apply(exported, tmp_path,
                                                                                             capsys):
    """`generate --engine onnx:DIR` with a vae-decoder/ export failed after the whole generation,
    writing nothing ('OnnxVAEDecoder' object has no attribute 'last_plan'), and --vae-tiling or
    --vae-dtype with such an export were silently not applied."""
    from wan_engine.cli import main

    out = tmp_path / "v.mp4"
    run = ["generate", "--model", "tiny", "--engine", f"onnx:{exported}", "--prompt", "a cat", "--size", "48x32",
           "--frames", "5", "--steps", "2", "--output", str(out)]
    assert main(run) == 0 and out.is_file()
    assert f"vae decode: onnx export {exported / 'vae-decoder'} (fp32, untiled)" in capsys.readouterr().out
    for option in (["--vae-tiling", "16x16"], ["--vae-dtype", "bf16"], ["--vae-speed", "channels-last"]):
        assert main([*run, "--output", str(tmp_path / "x.mp4"), *option]) == 2
        err = capsys.readouterr().err
        assert "vae_decode: the VAE decoder is an exported engine (onnx export" in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_requests_outside_the_exported_range_are_refused_before_any_compute_and_the_warmup_fits(exported):
    """A server on an export failed to start: its warm-up asked for 1 frame of a 5-9 frame export;
    and a job outside the range was accepted, then failed when it ran."""
    from wan_engine.engine import Engine, GenerationRequest, RequestError

    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{exported}")
    assert pipe.export_limits == SHAPES
    with pytest.raises(ValueError, match=r"num_frames: frames 13 is outside the exported engine's range \[5, 9\]"):
        pipe.run("a cat", size=(48, 32), num_frames=13, steps=2)
    with pytest.raises(ValueError, match=r"size: width 96 is outside the exported engine's range \[32, 64\]"):
        pipe.run("a cat", size=(96, 32), num_frames=5, steps=2)
    engine = Engine(pipe)
    try:
        assert engine.warmup() > 0  # the smallest video the export runs: 32x32, 5 frames
        for request, field in ((GenerationRequest("p", size=(48, 32), num_frames=13), "num_frames"),
                               (GenerationRequest("p", size=(48, 80), num_frames=5), "size")):
            with pytest.raises(RequestError) as err:
                engine.submit(request)
            assert err.value.field == field and engine.queue_depth == 0
    finally:
        engine.close()
    with pytest.raises(ValueError, match=r"the exported components hold no common frames: \[5, 9\] and \[13, 21\]"):
        SHAPES.overlap(dataclasses.replace(SHAPES, frames=(13, 21)))
    assert SHAPES.overlap(dataclasses.replace(SHAPES, height=(48, 96))).height == (48, 64)


def test_info_describes_an_export_directory(exported, capsys):
    from wan_engine.cli import main

    assert main(["info", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "dit: onnx, fp32, model tiny; batch 1-2, frames 5-9, height 32-64, width 32-64" in out
    assert "6 graph(s)" in out and "step caches: uncached, teacache, magcache, fbcache" in out
    assert "vae-decoder: onnx, fp32" in out and "2 graph(s)" in out
    assert "vae-encoder: absent: an i2v/flf2v conditioning encode runs in torch" in out
    assert main(["info", str(exported / "vae-decoder")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("vae-decoder: onnx")
    from wan_engine.export.info import _caches

    manifest = Manifest.load(exported / "dit")
    older = dataclasses.replace(manifest, files={"text_kv": "a", "full": "b", "full_residual": "c", "reuse": "d"})
    assert _caches(older) == "uncached, magcache, not teacache (an export from before the time-embedding graph: " \
                             "export it again), not fbcache (an export from before the split step: export it again)"
    untimed = dataclasses.replace(manifest, files={k: v for k, v in manifest.files.items() if k != "time_embedding"})
    assert _caches(untimed).startswith("uncached, magcache, fbcache, not teacache")


def test_directories_that_do_not_fit_are_refused_by_name(tiny, exported, tmp_path):
    with pytest.raises(ValueError, match="not an export directory"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{tmp_path}")
    other = wan_engine.configs.get_preset("tiny").replace(
        dit=wan_engine.configs.DiTConfig(dim=64, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, freq_dim=256))
    with pytest.raises(ValueError, match="exported from another model: dim differ"):
        wan_engine.WanPipeline.from_pretrained(other, device="cpu", engine=f"onnx:{exported}")
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{exported}")
    with pytest.raises(ValueError, match="size: height 128 is outside the exported engine.s range"):
        onnx_pipe.run(prompt="x", size=(64, 128), num_frames=9, steps=2)
    # An export from before the split step: FBCache is refused before any compute, by name.
    onnx_pipe.dit.has_first_block_steps = False
    with pytest.raises(ValueError, match="no first-block graphs, which the fbcache cache runs: it predates them; "
                                         "export it again"):
        onnx_pipe.run(**REQUEST, cache=CacheConfig("fbcache", 0.1), on_step=pytest.fail)
    with pytest.raises(ValueError, match="no first-block graphs"):
        ExportedSteps({k: v for k, v in onnx_pipe.dit.graphs.items() if k not in FIRST_BLOCK_KINDS}).first_block(
            *(torch.zeros(1),) * 4)
    with pytest.raises(ValueError, match="holds a onnx export; this engine runs trt"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"trt:{exported}")


def _float64_in(path) -> list[str]:
    """Where a graph holds float64: its inputs, outputs, initializers, constants, casts and (after
    shape inference) its intermediate values."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    g, double = model.graph, onnx.TensorProto.DOUBLE
    found = [v.name for v in [*g.input, *g.output, *g.value_info] if v.type.tensor_type.elem_type == double]
    found += [i.name for i in g.initializer if i.data_type == double]
    for node in g.node:
        for a in node.attribute:
            if (node.op_type == "Cast" and a.name == "to" and a.i == double) or (a.t and a.t.data_type == double):
                found.append(f"{node.op_type} {node.name}")
    return found


@pytest.fixture(scope="module")
def exported_before_features(tiny, tmp_path_factory):
    """A DiT export in the layout of before the step graphs took the timestep features: t in, the
    sinusoid computed in float64 inside, no time-embedding graph (the whole-step graph only: cheap)."""
    root = tmp_path_factory.mktemp("t_input")
    (root / "dit").mkdir()
    export_dit(tiny.dit, tiny.config.vae, root / "dit", SHAPES, "tiny", "fp32", ("full",), features=False).save(
        root / "dit")
    return root


def test_no_dit_graph_holds_float64(tiny, exported, exported_before_features):
    """The step graphs take the timesteps' sinusoid features, computed on the host in float64 as the
    official: no graph holds float64 (TensorRT has none; onnxruntime's CPU float64 Cos came in 1.29).
    An export of the layout before holds it, so this check sees float64 where it is."""
    manifest = Manifest.load(exported / "dit")
    assert manifest.timestep_features and "time_embedding" in manifest.files
    for name in manifest.files.values():
        assert _float64_in(exported / "dit" / name) == [], name
    from wan_engine.export.tensorrt import profiles_for  # the time graph is static: one timestep a call

    profile = profiles_for(exported / "dit", manifest, tiny.config)["time_embedding"]
    assert list(profile.values()) == [((1, tiny.config.dit.freq_dim),) * 3]
    older = Manifest.load(exported_before_features / "dit")
    assert not older.timestep_features and set(older.files) == {"text_kv", "full"}
    assert _float64_in(exported_before_features / "dit" / older.files["full"])


@pytest.mark.onnx_dit
def test_an_export_from_before_timestep_features_still_runs(tiny, exported_before_features, capsys):
    """Its graphs take t in fp32: the runner feeds it so, and the generation is the executor's;
    TeaCache, which needs the time-embedding graph, is refused by name before any compute."""
    onnx_pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{exported_before_features}")
    a, b = tiny.run(**REQUEST), onnx_pipe.run(**REQUEST)
    assert np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).max() <= 1
    with pytest.raises(ValueError, match="no time-embedding graph, which teacache measures its signal on: it "
                                         "predates it; export it again"):
        onnx_pipe.run(**REQUEST, cache=CacheConfig.parse("teacache:0.3", calibration="t2v-1.3B"),
                      on_step=pytest.fail)
    with pytest.raises(ValueError, match="no time-embedding graph"):
        onnx_pipe.dit.time_embedding(torch.tensor([500.0]))


def test_an_onnxruntime_without_float64_cos_is_refused_by_name_for_an_older_export(
        exported, exported_before_features, monkeypatch):
    """onnxruntime before 1.29 has no CPU float64 Cos, which an export made before the timestep
    features runs in its graphs: its sessions failed with NOT_IMPLEMENTED (Python 3.10 gets at most
    1.23). A newer export runs there."""
    import re
    from pathlib import Path

    import onnxruntime

    from wan_engine.export.onnx_runtime import DIT_MIN_ONNXRUNTIME

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()  # the test extra asks for the same
    assert re.search(r'ORT_DIT = "([\d.]+)"', setup).group(1) == ".".join(map(str, DIT_MIN_ONNXRUNTIME))
    for fine in ("1.29.0", "1.32.0", "2.0.1", "1.30.0.dev20261101"):
        check_onnxruntime_for_dit(fine, "dir")
    for old in ("1.28.0", "1.23.2", "1.9.1"):
        with pytest.raises(ValueError, match=rf"onnxruntime {old} cannot run the DiT export dir"):
            check_onnxruntime_for_dit(old, "dir")
        check_onnxruntime_for_dit(old, "dir", timestep_features=True)
    monkeypatch.setattr(onnxruntime, "__version__", "1.28.0")
    with pytest.raises(ValueError, match=r"onnxruntime 1.28.0 cannot run the DiT export .*float64.*export it again, "
                                         r"or pip install 'onnxruntime>=1.29'"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{exported_before_features}")
    wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{exported}")


def test_cli_export_writes_a_directory_and_refuses_a_used_one(tmp_path, capsys):
    from wan_engine.cli import main

    out = tmp_path / "vae"
    assert main(["export", "--model", "tiny", "--component", "vae-decoder", "--out", str(out), "--height", "32-64",
                 "--width", "32-64", "--frames", "5-9"]) == 0
    printed = capsys.readouterr().out
    assert "exported vae-decoder of tiny" in printed and (out / "manifest.json").is_file()
    assert f"weights {Manifest.load(out).weights.rpartition(':')[2][:12]}" in printed
    assert main(["export", "--model", "tiny", "--component", "vae-decoder", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", "--model", "tiny", "--component", "dit", "--out", str(tmp_path / "d"),
                 "--batch", "1-3"]) == 2
    assert "batch must be within 1-2" in capsys.readouterr().err


@pytest.mark.trt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (its wheel fetches from outside the package registry)")
def test_tensorrt_engines_match_onnxruntime(tiny, exported, tmp_path):
    from wan_engine.export.tensorrt import build_engines, profiles_for

    manifest = Manifest.load(exported / "dit")
    built = build_engines(exported / "dit", tmp_path / "dit", profiles_for(exported / "dit", manifest, tiny.config))
    assert built.format == "trt"
    pipe = without_prompt_cleaning(
        wan_engine.WanPipeline.from_pretrained("tiny", device="cuda", dtype="fp32", engine=f"trt:{tmp_path}"))
    reference = without_prompt_cleaning(wan_engine.WanPipeline.from_pretrained("tiny", device="cuda", dtype="fp32"))
    a, b = pipe.run(**REQUEST), reference.run(**REQUEST)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1


# flf2v's export holds i2v's paths (CLIP rows, image K/V, the encoder chunks) and more: i2v runs with -m slow.
@pytest.mark.parametrize("model", [pytest.param("tiny-i2v", marks=pytest.mark.slow), "tiny-flf2v"])
def test_an_image_conditioned_generation_through_onnxruntime_is_the_executors(model, tmp_path):
    """The i2v/flf2v DiT exports with the CLIP features as a second text-graph input and the image
    K/V as step inputs (the conditioning channels ride in the patches); the VAE encoder (through the
    CLI) as its first and steady chunks, within 1e-5 of `vae.encode` at two shapes; the generation
    runs both (the decoder is the t2v tiny's, whose export the tests above cover, so it decodes in
    torch here)."""
    from test_i2v import rgb

    from wan_engine.cli import main

    pipe = wan_engine.WanPipeline.from_pretrained(model, device="cpu")
    export_onnx(pipe, "dit", tmp_path / "dit", SHAPES)  # no vae-decoder/: the tiny one's, tested above
    ranges = ["--frames", "5-9", "--height", "32-64", "--width", "32-64"]
    assert main(["export", "--model", model, "--component", "vae-encoder", "--out", str(tmp_path / "vae-encoder"),
                 *ranges]) == 0
    encoder = OnnxVAEEncoder(tmp_path / "vae-encoder", pipe.vae)
    for frames, height, width in ((5, 32, 48), (9, 64, 64)):  # two shapes from one file
        video = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(frames)) * 2 - 1
        assert _rel_l2(encoder(video), pipe.vae.encode(video)) <= 1e-5
    with pytest.raises(ValueError, match="height 72 is outside the exported range"):
        encoder(torch.zeros(1, 3, 5, 72, 64))
    with pytest.raises(ValueError, match="takes one video"):
        encoder(torch.zeros(2, 3, 5, 32, 32))
    text_inputs = onnx.load(str(tmp_path / "dit" / "dit_text_kv.onnx"), load_external_data=False).graph.input
    assert len(text_inputs) == 2  # the context and the CLIP features
    # The TensorRT profiles come from these graphs (no TensorRT needed to read them): the CLIP input
    # spans batch 1-2 at the model's fixed token count.
    from wan_engine.export.tensorrt import profiles_for

    cfg = pipe.config.dit
    clip_tokens = (2 if model == "tiny-flf2v" else 1) * cfg.image_tokens
    profile = profiles_for(tmp_path / "dit", Manifest.load(tmp_path / "dit"), pipe.config)["text_kv"]
    assert profile[text_inputs[1].name] == ((1, clip_tokens, cfg.image_dim),) + ((2, clip_tokens, cfg.image_dim),) * 2
    first = tmp_path / "vae-encoder" / "vae_encoder_first.onnx"
    video_input = onnx.load(str(first), load_external_data=False).graph.input[0]
    profile = profiles_for(tmp_path / "vae-encoder", Manifest.load(tmp_path / "vae-encoder"), pipe.config)["first"]
    assert profile[video_input.name] == ((1, 3, 1, 32, 32),) + ((1, 3, 1, 64, 64),) * 2
    onnx_pipe = wan_engine.WanPipeline.from_pretrained(model, device="cpu", engine=f"onnx:{tmp_path}")
    assert isinstance(onnx_pipe.vae_encoder, OnnxVAEEncoder)
    images = dict(image=rgb(32, 48, 1)) | (dict(last_image=rgb(32, 48, 2)) if model == "tiny-flf2v" else {})
    kw = dict(prompt="a paper boat", size=(48, 32), num_frames=9, steps=4, seed=5, **images)
    a, b = pipe.run(**kw), onnx_pipe.run(**kw)
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
    print(f"{model}: onnxruntime vs executor: max {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= 1
    with pytest.raises(ValueError, match="needs clip_fea"):
        onnx_pipe.dit.prepare_text(torch.zeros(1, 4, pipe.config.dit.text_dim))
