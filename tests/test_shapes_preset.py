"""The trained `shapes` preset: it loads from the package, both layouts of its weights load to the same
modules, the executor and the reference make the same video, parallel launches make the one-process
video, and a generated clip has its prompt's background and motion (read by the adherence scorer).

The full adherence figures (24 held-out + 24 seen prompts x 2 seeds) come from
`wan-engine bench --suite adherence --model shapes`.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wan_engine
from wan_engine.assembly import load_dit, load_text_encoder, load_vae
from wan_engine.assembly.pipeline import embedded_weights
from wan_engine.bench.accuracy import psnr
from wan_engine.bench.adherence import read_clip
from wan_engine.configs import get_preset
from wan_engine.loading.dit_format import official_to_diffusers_dit
from wan_engine.loading.vae_format import official_to_diffusers_vae
from wan_engine.shapes.world import HELD_OUT, Combo

SHAPES = get_preset("shapes")
FAST = dict(steps=10, seed=3)  # the preset's size (96x96, 17 frames), fewer steps


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("shapes", device="cpu")


def test_the_preset_loads_its_embedded_weights(pipe):
    assert pipe.config.name == "shapes" and pipe.config.dit == SHAPES.dit and pipe.config.vae == SHAPES.vae
    assert pipe.config.sample == SHAPES.sample
    files = sorted(p.name for p in embedded_weights("shapes").iterdir())
    assert {"config.json", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth",
            "models_t5_umt5-xxl-enc-bf16.pth", "google"} <= set(files)
    size = sum(p.stat().st_size for p in embedded_weights("shapes").rglob("*") if p.is_file())
    assert size < 40 * 2 ** 20  # a few MB, shipped in the package


def _diffusers_copy(root, out):
    """The shipped weights rewritten in the diffusers layout with the project's own key maps."""
    dit = load_dit(root)
    vae = load_vae(root)
    text = load_text_encoder(root, text_len=SHAPES.dit.text_len)
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (out / sub).mkdir(parents=True)
    (out / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    d = SHAPES.dit
    (out / "transformer" / "config.json").write_text(json.dumps({
        "num_attention_heads": d.num_heads, "attention_head_dim": d.head_dim, "in_channels": d.in_dim,
        "out_channels": d.out_dim, "text_dim": d.text_dim, "freq_dim": d.freq_dim, "ffn_dim": d.ffn_dim,
        "num_layers": d.num_layers, "eps": d.eps}))
    save_file({k: v.contiguous() for k, v in official_to_diffusers_dit(dit.state_dict()).items()},
              str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    (out / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    save_file({k: v.contiguous() for k, v in official_to_diffusers_vae(vae.state_dict()).items()},
              str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    text.model.save_pretrained(out / "text_encoder")
    text.tokenizer.hf.save_pretrained(out / "tokenizer")
    return dit, vae, text


def test_both_layouts_of_the_shipped_weights_load_identical_modules(tmp_path):
    root = embedded_weights("shapes")
    dit, vae, text = _diffusers_copy(root, tmp_path)
    pairs = [(dit, load_dit(tmp_path)), (vae, load_vae(tmp_path)),
             (text.model, load_text_encoder(tmp_path, text_len=SHAPES.dit.text_len).model)]
    for ours, theirs in pairs:
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_executor_and_reference_make_the_same_video(pipe):
    reference = wan_engine.WanPipeline.from_pretrained("shapes", device="cpu", engine="reference")
    prompt = HELD_OUT[0].caption
    a, b = pipe.generate(prompt, **FAST), reference.generate(prompt, **FAST)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    print(f"executor vs reference: PSNR {psnr(a, b):.1f} dB, max {diff.max()} levels")
    assert diff.max() <= 1  # fp32 summation order only (as on the random presets)


@pytest.mark.parametrize("combo", [HELD_OUT[1], HELD_OUT[7], Combo("yellow", "circle", "up", "black")],
                         ids=lambda c: c.caption.replace(" ", "-"))
def test_a_generated_clip_has_its_prompts_background_and_motion(pipe, combo):
    """What the current weights follow (the adherence suite: background 100 %, direction 94 % held
    out): the background and the direction of motion, on these seeded generations. Colour they
    follow on 56-62 % of prompts only, so no test claims it."""
    reading = read_clip(pipe.generate(combo.caption, seed=0))
    assert reading.background == combo.background, reading
    assert reading.direction == combo.direction, reading
    assert reading.color is not None  # a foreground shape is drawn


TORCHRUN_REQUEST = ["-m", "wan_engine.cli", "generate", "--model", "shapes", "--prompt", HELD_OUT[2].caption,
                    "--size", "64x64", "--frames", "9", "--steps", "6", "--seed", "5"]


def _cli_frames(cwd, name, launcher, extra=()):
    done = subprocess.run([*launcher, *TORCHRUN_REQUEST, "--output", f"{name}.mp4", "--save-frames", f"{name}.npy",
                           *extra], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return np.load(cwd / f"{name}.npy")


@pytest.fixture(scope="module")
def single_process_frames(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("shapes_single")  # not the repo root: the installed package only
    return _cli_frames(cwd, "single", [sys.executable])


@pytest.mark.parametrize("layout, nproc, flags", [("ulysses2", 2, ["--ulysses", "2"]), ("ring2", 2, ["--ring", "2"]),
                                                  ("cfg2", 2, ["--cfg-parallel"])])
def test_torchrun_layouts_make_the_one_process_video(tmp_path, single_process_frames, layout, nproc, flags):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    parallel = _cli_frames(tmp_path, layout, torchrun, flags)
    diff = np.abs(parallel.astype(np.int16) - single_process_frames.astype(np.int16))
    print(f"{layout}: max {diff.max()} levels, {(diff > 0).sum()} of {diff.size} values differ")
    assert diff.max() <= 1  # fp32 summation order (test_pipeline_parallel.py explains the one level)
