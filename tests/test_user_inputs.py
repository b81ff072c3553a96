"""Bad input from a user's seat: each is refused with a message naming the parameter, the CLI
prints no traceback and leaves no file behind. Complements the basic cases in test_pipeline.py."""
from __future__ import annotations

import re

import pytest

import wan_engine
from wan_engine.cli import main as cli_main


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="reference")


def cli_refuses(capsys, args: list[str], match: str, rc: int = 2) -> str:
    """Run the CLI, expect exit code `rc` and `match` in a one-line error without a traceback."""
    assert cli_main(args) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, err), err
    return err


@pytest.mark.parametrize("kwargs, match", [
    # inf guidance used to run and return an all-black video (NaN latents)
    (dict(guidance=float("inf")), "guidance must be finite"),
    (dict(guidance="strong"), "guidance must be a number"),
    (dict(guidance=[5.0]), "guidance must be a number"),
    (dict(shift=float("inf")), "shift must be finite"),
    (dict(shift="x"), "shift must be a number"),
    # a fractional size used to be truncated silently (and reported as the truncated value)
    (dict(size=(40.7, 32)), "size must be two integers"),
    (dict(size="32x32"), "size must be two integers"),
    (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=True), "seed must be an integer"),
    (dict(seed=1.0), "seed must be an integer"),
    (dict(negative_prompt=3), "negative_prompt must be a string"),
])
def test_api_refuses_bad_requests_naming_the_parameter(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe.make_request("a cat", **kwargs)


def test_api_accepts_the_edges_of_the_ranges(pipe):
    req = pipe.make_request("a cat", size=(16, 16), guidance=0, shift=1e-3, seed=2**63 - 1)
    assert (req.width, req.height, req.guidance, req.seed) == (16, 16, 0.0, 2**63 - 1)


@pytest.mark.parametrize("args, match", [
    (["--guidance", "inf"], "guidance must be finite"),
    (["--shift", "inf"], "shift must be finite"),
    (["--seed", str(2**63)], r"--seed must be in \[0, 2\*\*63\)"),
])
def test_cli_refuses_non_finite_and_out_of_range_numbers_before_loading(tmp_path, capsys, args, match):
    out = tmp_path / "x.mp4"
    # A model that does not exist: the option must be refused before the load is even tried.
    cli_refuses(capsys, ["generate", "--model", str(tmp_path / "absent"), "--prompt", "p", "--output", str(out),
                         *args], match)
    assert not out.exists()


def test_unknown_device_is_a_message_not_a_traceback(capsys):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="tpu")
    cli_refuses(capsys, ["generate", "--prompt", "p", "--device", "tpu"], "device must be")
    cli_refuses(capsys, ["bench", "--suite", "roofline", "--model", "tiny", "--device", "gpu0", "--no-write"],
                "device must be")


TINY_RUN = ["generate", "--model", "tiny", "--prompt", "p", "--size", "32x32", "--frames", "1", "--steps", "1"]


def test_cli_refuses_bad_output_paths_before_loading(tmp_path, capsys):
    """Each of these used to fail only after the whole generation: a traceback (directory), a
    stray error after the MP4 was written (--save-frames folder), or MP4 data under another name."""
    (tmp_path / "afile").write_text("not a folder")
    absent_model = ["--model", str(tmp_path / "absent")]  # refused first, so no load is tried
    cases = [
        (["--output", str(tmp_path)], "--output .* is a directory"),
        (["--output", str(tmp_path / "clip.gif")], "--output must name a .mp4 file"),
        (["--output", str(tmp_path / "afile" / "x.mp4")], "--output .* cannot be written: .*afile is not a writable"),
        (["--output", str(tmp_path / "x.mp4"), "--save-frames", str(tmp_path / "afile" / "f.npy")],
         "--save-frames .* cannot be written"),
        (["--output", str(tmp_path / "x.mp4"), "--save-frames", str(tmp_path / "f.txt")],
         "--save-frames must name a .npy file"),
        (["--output", str(tmp_path / "x.mp4"), "--fps", "0"], "fps must be > 0"),
    ]
    for args, match in cases:
        cli_refuses(capsys, [*TINY_RUN, *absent_model, *args], match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_cli_creates_missing_folders_and_writes_readable_files(tmp_path, capsys):
    import numpy as np

    from wan_engine.video import read_video

    out, frames = tmp_path / "a" / "b" / "clip.mp4", tmp_path / "c" / "frames.npy"
    assert cli_main([*TINY_RUN, "--output", str(out), "--save-frames", str(frames)]) == 0
    assert np.array_equal(np.load(frames).shape, (1, 32, 32, 3)) and read_video(out).shape == (1, 32, 32, 3)
    # The same permissions as any file the user creates (the temporary file used to be 0600).
    reference = tmp_path / "reference"
    reference.touch()
    assert out.stat().st_mode == frames.stat().st_mode == reference.stat().st_mode
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"]  # no temporary left
    assert sorted(p.name for p in frames.parent.iterdir()) == ["frames.npy"]


def test_save_video_leaves_nothing_when_ffmpeg_fails(tmp_path):
    """An fps that rounds to 0/1 passes validation but makes ffmpeg fail at its start; the writer
    reports nothing itself, and the empty file used to be renamed into place."""
    import numpy as np

    from wan_engine.video import save_video

    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(OSError, match="did not produce a complete MP4"):
        save_video(frames, tmp_path / "x.mp4", fps=1e-9)
    assert list(tmp_path.iterdir()) == []
    for fps, match in [(0, "fps must be > 0"), (float("nan"), "fps must be finite")]:
        with pytest.raises(ValueError, match=match):
            save_video(frames, tmp_path / "x.mp4", fps=fps)
    with pytest.raises(ValueError, match="path must name a .mp4 file"):
        save_video(frames, tmp_path / "x.avi")


def test_truncated_mp4_has_no_index_box(tmp_path):
    import numpy as np

    from wan_engine.video import _has_moov_box, save_video

    path = save_video(np.full((3, 16, 16, 3), 100, dtype=np.uint8), tmp_path / "x.mp4")
    data = path.read_bytes()
    assert _has_moov_box(path)
    # ffmpeg writes the moov box last: any prefix that stops before it is incomplete.
    moov = data.index(b"moov") - 4
    for cut in (0, 7, moov // 2, moov):
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        assert not _has_moov_box(tmp_path / "cut.mp4")


def test_info_reports_damaged_dit_files_by_name(tmp_path, capsys):
    """`info` reads only headers; an empty or garbage shard used to raise struct.error or
    OverflowError from a hand-written header parser, and a truncated one went unnoticed."""
    from checkpoint_factory import write_original

    from wan_engine.configs import get_preset

    root = write_original(tmp_path / "m", get_preset("tiny"), shards=2)
    assert cli_main(["info", str(root)]) == 0
    assert "48.0 k DiT parameters" in capsys.readouterr().out  # the tiny DiT, not "0.00 B"
    shard = root / "diffusion_pytorch_model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    for damaged in (b"", b"\xff" * 64, data[: len(data) - 16]):
        shard.write_bytes(damaged)
        cli_refuses(capsys, ["info", str(root)], f"{shard.name}: corrupt or truncated safetensors file")


def test_info_describes_a_preset_by_name(tmp_path, capsys, monkeypatch):
    """`generate --model shapes` takes a preset name; `info shapes` used to say "model directory not found"."""
    from wan_engine.loading.fingerprint import dit_fingerprint
    from wan_engine.assembly.pipeline import embedded_weights

    monkeypatch.chdir(tmp_path)  # no folder named like a preset here
    assert cli_main(["info", "shapes"]) == 0
    out = capsys.readouterr().out
    assert "trained weights embedded" in out and f"root: {embedded_weights('shapes')}" in out
    assert dit_fingerprint(embedded_weights("shapes")).rpartition(":")[2][:12] in out
    assert cli_main(["info", "t2v-14B"]) == 0
    out = capsys.readouterr().out
    assert "seeded random weights" in out and "dim=5120" in out and "num_layers=40" in out
    (tmp_path / "shapes").mkdir()  # a folder of that name is what the user means: described as a folder
    cli_refuses(capsys, ["info", "shapes"], "shapes is in neither known layout")


def test_bench_refuses_bad_size_and_out_before_running(tmp_path, capsys):
    """840x480 passed the bench's multiple-of-8 check and then failed inside the suites (a
    traceback in the notes, exit 1); --out naming a file failed after the suites had run."""
    (tmp_path / "afile").write_text("")
    bench = ["bench", "--suite", "roofline", "--model", "t2v-1.3B"]
    cli_refuses(capsys, [*bench, "--size", "840x480", "--no-write"], "size must be positive multiples of 16")
    # TI2V-5B's grid is 32 pixels (Wan2.2 VAE stride 16 x patch 2): 48x32 failed inside the step suite.
    cli_refuses(capsys, ["bench", "--suite", "step", "--model", "tiny-ti2v", "--size", "48x32", "--no-write"],
                "size must be positive multiples of 32")
    cli_refuses(capsys, [*bench, "--out", str(tmp_path / "afile")], "--out .* is a file")
    cli_refuses(capsys, [*bench, "--out", str(tmp_path / "afile" / "sub")], "--out .* cannot be written")
    assert cli_main([*bench, "--out", str(tmp_path / "new" / "dir")]) == 0
    assert any(p.suffix == ".json" for p in (tmp_path / "new" / "dir").iterdir())


def test_a_model_file_instead_of_its_directory_is_named_as_such(tmp_path, capsys):
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; pass the model directory"):
        wan_engine.WanPipeline.from_pretrained(str(weights))
    cli_refuses(capsys, ["generate", "--prompt", "p", "--model", str(weights)], "is a file; pass the model directory")
    cli_refuses(capsys, ["info", str(weights)], "is a file; pass the model directory")


@pytest.mark.parametrize("component", ["Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"])
def test_a_checkpoint_of_another_model_is_a_message(tmp_path, capsys, component):
    """A state dict that is not the expected component used to escape as a raw KeyError
    (a traceback from the CLI)."""
    import torch
    from checkpoint_factory import write_original

    from wan_engine.configs import get_preset

    root = write_original(tmp_path / "m", get_preset("tiny"))
    torch.save({"foo.weight": torch.zeros(3)}, root / component)
    cli_refuses(capsys, ["generate", "--prompt", "p", "--model", str(root), "--output", str(tmp_path / "x.mp4")],
                f"{component}: not a ")
    assert not (tmp_path / "x.mp4").exists()


def test_load_vae_of_a_missing_path_says_not_found(tmp_path):
    with pytest.raises(ValueError, match="VAE checkpoint not found"):  # was "unsupported weight file type ''"
        wan_engine.load_vae(tmp_path / "absent")


@pytest.mark.parametrize("damage, match", [
    # a bad tokenizer.json used to give only the JSON parser's message, naming no file
    ("google/umt5-xxl/tokenizer.json", "umt5-xxl: unreadable tokenizer files"),
    # a weight_map that is not a mapping used to be an AttributeError traceback
    ("diffusion_pytorch_model.safetensors.index.json", "index.json: not a valid shard index"),
])
def test_damaged_metadata_files_are_named(tmp_path, capsys, damage, match):
    from checkpoint_factory import write_original

    from wan_engine.configs import get_preset

    root = write_original(tmp_path / "m", get_preset("tiny"))
    (root / damage).write_text('{"weight_map": 5}' if damage.endswith("index.json") else "{garbage")
    cli_refuses(capsys, ["generate", "--prompt", "p", "--model", str(root), "--output", str(tmp_path / "x.mp4")],
                match)


def test_export_on_a_torch_that_cannot_is_refused_by_name_before_the_load(tmp_path, capsys, monkeypatch):
    """torch 2.9's exporter failed on every graph with "NameError: name 'L' is not defined" deep in
    its decomposition, after the model load; the export now names the release it needs first."""
    import torch

    from wan_engine.export.onnx_export import export_onnx
    from wan_engine.export.versions import check_torch_for_export

    for fine in ("2.10.0", "2.13.0+cpu", "2.11.0+cu128", "3.0.0.dev20270101"):
        check_torch_for_export(fine)
    for old in ("2.9.1+cu128", "2.4.0", "1.13.1"):
        with pytest.raises(ValueError, match=rf"exporting to ONNX needs torch >= 2.10; this is torch {re.escape(old)}"):
            check_torch_for_export(old)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the torch release was checked")

    monkeypatch.setattr(torch, "__version__", "2.9.1+cu128")
    monkeypatch.setattr(wan_engine.WanPipeline, "from_pretrained", no_load)
    out = tmp_path / "export"
    cli_refuses(capsys, ["export", "--model", "tiny", "--component", "dit", "--out", str(out)],
                r"exporting to ONNX needs torch >= 2.10; this is torch 2.9.1\+cu128.*pytorch/pytorch#172903")
    with pytest.raises(ValueError, match="needs torch >= 2.10"):
        export_onnx(object(), "vae-decoder", out)  # the API checks first too
    assert not out.exists()
