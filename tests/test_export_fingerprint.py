"""Which weights an export holds: its manifest records the fingerprint of the DiT checkpoint folder it
was made from (`loading/fingerprint.py`), and a run of the export refuses a model folder with other
weights of the same architecture (a fine-tune), which the config check cannot tell apart. Before this,
such a run generated the exported model's video under the other model's name.
"""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import wan_engine
from checkpoint_factory import write_diffusers, write_original, write_two_experts
from wan_engine.configs import get_preset
from wan_engine.export.manifest import Manifest, ShapeRange
from wan_engine.export.onnx_export import export_onnx
from wan_engine.loading.errors import CheckpointError
from wan_engine.loading.fingerprint import dit_fingerprint, state_fingerprint
from wan_engine.loading.state_dicts import read_dit_state_dict

SHAPES = ShapeRange(batch=(1, 2), frames=(5, 9), height=(32, 64), width=(32, 64))
TINY = get_preset("tiny")
Q = "blocks.0.self_attn.q.weight"  # [32, 32] in the tiny DiT: rows 0, 10, 20 and 31 are sampled


def _edit_tensor(folder, key: str, change) -> None:
    """Apply `change` to tensor `key` in whichever shard of `folder` holds it."""
    for f in sorted(folder.glob("diffusion_pytorch_model*.safetensors")):
        sd = load_file(str(f))
        if key in sd:
            change(sd[key])
            save_file(sd, str(f))
            return
    raise AssertionError(f"{key} is in no shard of {folder}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint")
    return dict(original=write_original(root / "original", TINY, seed=0),
                diffusers=write_diffusers(root / "diffusers", TINY, seed=0) / "transformer",
                other=write_original(root / "other", TINY, seed=1))


def test_the_fingerprint_names_the_weights_not_the_layout_or_the_storage_dtype(folders, tmp_path):
    base = dit_fingerprint(folders["original"])
    assert base.startswith("rows4-bf16-sha256:")
    assert dit_fingerprint(folders["diffusers"]) == base  # same tensors under diffusers names, one file
    assert dit_fingerprint(folders["other"]) != base
    bf16 = shutil.copytree(folders["original"], tmp_path / "bf16")
    for f in bf16.glob("diffusion_pytorch_model*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(f))
    assert dit_fingerprint(bf16) == base  # a bf16 copy of fp32 weights (round to nearest even)
    # the in-memory recipe (the VAE's) samples the same rows: the loaded state dict gives the same text
    assert state_fingerprint(read_dit_state_dict(folders["original"])[0]) == base


def test_a_change_on_a_sampled_row_changes_it_and_one_off_them_does_not(folders, tmp_path):
    base = dit_fingerprint(folders["original"])
    sampled = shutil.copytree(folders["original"], tmp_path / "sampled")
    _edit_tensor(sampled, Q, lambda t: t[31].add_(0.01))
    assert dit_fingerprint(sampled) != base
    bias = shutil.copytree(folders["original"], tmp_path / "bias")  # 1-D tensors are hashed whole
    _edit_tensor(bias, "blocks.1.ffn.2.bias", lambda t: t[7].add_(0.01))
    assert dit_fingerprint(bias) != base
    unsampled = shutil.copytree(folders["original"], tmp_path / "unsampled")  # the documented limit
    _edit_tensor(unsampled, Q, lambda t: t[5].add_(0.01))
    assert dit_fingerprint(unsampled) == base


def test_a_folder_without_weights_or_with_a_corrupt_file_is_named(folders, tmp_path):
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model"):
        dit_fingerprint(tmp_path)
    broken = shutil.copytree(folders["original"], tmp_path / "broken")
    shard = sorted(broken.glob("diffusion_pytorch_model*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=shard.name):
        dit_fingerprint(broken)


def test_check_weights_refuses_other_weights_and_warns_where_nothing_was_recorded():
    manifest = Manifest("m", "dit", "onnx", "fp32", SHAPES, {}, {}, weights="rows4-bf16-sha256:" + "a" * 64)
    assert manifest.check_weights(manifest.weights, "/models/m") is None
    with pytest.raises(ValueError, match="other weights than /models/x's.*aaaaaaaaaaaa there, bbbbbbbbbbbb here"):
        manifest.check_weights("rows4-bf16-sha256:" + "b" * 64, "/models/x")
    with pytest.raises(ValueError, match="seeded random weights"):
        manifest.check_weights(None, "the preset")
    unrecorded = Manifest("m", "dit", "onnx", "fp32", SHAPES, {}, {})
    assert "records no weight fingerprint" in unrecorded.check_weights("rows4-bf16-sha256:" + "b" * 64, "/models/x")
    assert unrecorded.check_weights(None, "the preset") is None


@pytest.fixture(scope="module")
def exported(folders, tmp_path_factory):
    """The original folder's DiT exported (uncached step graph only)."""
    out = tmp_path_factory.mktemp("fingerprint_export") / "dit"
    pipe = wan_engine.WanPipeline.from_pretrained(str(folders["original"]), device="cpu")
    [(folder, manifest)] = export_onnx(pipe, "dit", out, SHAPES, kinds=("full",))
    return folder, manifest


@pytest.mark.onnx_export
def test_an_export_runs_only_with_the_weights_it_was_made_from(folders, exported, tmp_path):
    folder, manifest = exported
    assert Manifest.load(folder).weights == manifest.weights == dit_fingerprint(folders["original"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching fingerprint: no warning
        for name in ("original", "diffusers"):  # the same weights in the other layout run too
            model = folders[name] if name == "original" else folders[name].parent
            wan_engine.WanPipeline.from_pretrained(str(model), device="cpu", engine=f"onnx:{folder}")
    with pytest.raises(ValueError, match=r"exported from other weights than .*other's .*fine-tune"):
        wan_engine.WanPipeline.from_pretrained(str(folders["other"]), device="cpu", engine=f"onnx:{folder}")
    with pytest.raises(ValueError, match="seeded random weights"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=f"onnx:{folder}")
    old = shutil.copytree(folder, tmp_path / "old")  # an export from before fingerprints
    data = json.loads((old / "manifest.json").read_text())
    del data["weights"]
    (old / "manifest.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="records no weight fingerprint"):
        wan_engine.WanPipeline.from_pretrained(str(folders["other"]), device="cpu", engine=f"onnx:{old}")


@pytest.mark.onnx_export
def test_each_expert_export_records_and_checks_its_own_weights(tmp_path):
    model = write_two_experts(tmp_path / "a14b", get_preset("tiny-a14b"), "original")
    pipe = wan_engine.WanPipeline.from_pretrained(str(model), device="cpu")
    written = export_onnx(pipe, "dit", tmp_path / "export" / "dit", SHAPES, kinds=("full",))
    recorded = {m.expert: m.weights for _, m in written}
    assert recorded == {e: dit_fingerprint(model / f"{e}_model") for e in ("high_noise", "low_noise")}
    engine = f"onnx:{tmp_path / 'export'}"
    wan_engine.WanPipeline.from_pretrained(str(model), device="cpu", engine=engine)
    _edit_tensor(model / "low_noise_model", "head.head.bias", lambda t: t.add_(0.01))  # low noise only
    with pytest.raises(ValueError, match=r"low_noise.*other weights than .*low_noise_model's"):
        wan_engine.WanPipeline.from_pretrained(str(model), device="cpu", engine=engine)


@pytest.mark.onnx_export
def test_info_prints_the_same_fingerprint_for_the_model_and_its_export(folders, exported, capsys):
    from wan_engine.cli import main

    short = dit_fingerprint(folders["original"]).rpartition(":")[2][:12]
    for path in (folders["original"], exported[0]):
        assert main(["info", str(path)]) == 0
        assert f"fingerprint {short}" in capsys.readouterr().out


@pytest.mark.onnx_export
def test_the_vae_exports_check_the_loaded_vae(folders, exported, tmp_path):
    """A VAE export records its VAE's fingerprint (of the loaded state: the run loads the VAE anyway)."""
    engine = tmp_path / "engine"
    shutil.copytree(exported[0], engine / "dit")
    pipe = wan_engine.WanPipeline.from_pretrained(str(folders["original"]), device="cpu")
    [(_, manifest)] = export_onnx(pipe, "vae-decoder", engine / "vae-decoder", SHAPES)
    assert manifest.weights == state_fingerprint(pipe.vae.state_dict())
    wan_engine.WanPipeline.from_pretrained(str(folders["original"]), device="cpu", engine=f"onnx:{engine}")
    model = shutil.copytree(folders["original"], tmp_path / "other_vae")  # the same DiT, another VAE
    vae = torch.load(model / "Wan2.1_VAE.pth", weights_only=True)
    name = next(k for k, v in vae.items() if k.startswith("decoder.") and v.dim() == 1)
    vae[name] = vae[name] + 0.01
    torch.save(vae, model / "Wan2.1_VAE.pth")
    with pytest.raises(ValueError, match=r"vae-decoder was exported from other weights than the model's VAE's"):
        wan_engine.WanPipeline.from_pretrained(str(model), device="cpu", engine=f"onnx:{engine}")
