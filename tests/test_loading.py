"""Checkpoint loading in both on-disk layouts, and the errors users see for broken checkpoints."""
import json
import shutil

import pytest
import torch

from checkpoint_factory import write_diffusers, write_original
from wan_engine.configs import get_preset
from wan_engine.assembly import load_dit, load_text_encoder, load_vae
from wan_engine.loading.errors import CheckpointError
from wan_engine.loading.info import describe_model

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return write_original(root / "original", TINY, seed=3), write_diffusers(root / "diffusers", TINY, seed=3)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_both_layouts_load_identical_reference_modules(layouts):
    original, diffusers = layouts
    dit_o, dit_d = load_dit(original), load_dit(diffusers / "transformer")
    assert dit_o.config == dit_d.config == TINY.dit  # text_dim inferred: the official config.json omits it
    _assert_same_weights(dit_o, dit_d)
    _assert_same_weights(load_dit(diffusers), dit_d)  # the root works as well as the component folder
    vae_o, vae_d = load_vae(original), load_vae(diffusers / "vae")
    assert vae_o.config == vae_d.config == TINY.vae
    _assert_same_weights(vae_o, vae_d)
    t5_o, t5_d = load_text_encoder(original), load_text_encoder(diffusers)
    _assert_same_weights(t5_o.model, t5_d.model)
    ids_o, _ = t5_o.tokenizer(["a cat"])
    ids_d, _ = t5_d.tokenizer(["a cat"])
    assert torch.equal(ids_o, ids_d)


def test_dtype_and_device_are_applied(layouts):
    dit = load_dit(layouts[0], dtype=torch.bfloat16)
    for name, p in dit.named_parameters():  # the official fp32 regions stay fp32 (test_fp32_regions.py)
        assert p.dtype == (torch.float32 if dit.is_fp32_parameter(name) else torch.bfloat16), name
    assert dit.compute_dtype == torch.bfloat16
    assert {p.device.type for p in dit.parameters()} == {"cpu"}


def test_sharded_checkpoint_without_index_still_loads(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")
    (copy / "diffusion_pytorch_model.safetensors.index.json").unlink()
    _assert_same_weights(load_dit(copy), load_dit(layouts[0]))


def test_missing_shard_is_named(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")
    (copy / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard .*00002-of-00002.safetensors"):
        load_dit(copy)


def test_truncated_safetensors_is_named(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")
    shard = copy / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="00001-of-00002.safetensors: corrupt or truncated"):
        load_dit(copy)


def test_truncated_pth_is_named(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")
    vae = copy / "Wan2.1_VAE.pth"
    vae.write_bytes(vae.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="Wan2.1_VAE.pth: corrupt"):
        load_vae(copy)


def _rewrite_shard(directory, edit):
    from safetensors.torch import load_file, save_file

    shard = directory / "diffusion_pytorch_model-00001-of-00002.safetensors"
    sd = load_file(str(shard))
    edit(sd)
    save_file(sd, str(shard))
    index = directory / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if v != shard.name}
    data["weight_map"].update({k: shard.name for k in sd})
    index.write_text(json.dumps(data))


def test_wrong_shape_tensor_is_named(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")

    def edit(sd):
        key = next(k for k in sorted(sd) if k.endswith("self_attn.q.weight"))
        sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1)

    _rewrite_shard(copy, edit)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'blocks\.\d+\.self_attn\.q\.weight'"):
        load_dit(copy)


def test_unknown_key_is_named(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")
    _rewrite_shard(copy, lambda sd: sd.__setitem__("blocks.0.self_attn.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: 'blocks\.0\.self_attn\.extra\.weight'"):
        load_dit(copy)


def test_unknown_diffusers_key_is_named(layouts, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(layouts[1], tmp_path / "m")
    f = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    sd["blocks.0.attn1.mystery.weight"] = torch.zeros(2)
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn1\.mystery\.weight"):
        load_dit(copy)


def test_missing_key_is_named(layouts, tmp_path):
    copy = shutil.copytree(layouts[0], tmp_path / "m")
    _rewrite_shard(copy, lambda sd: sd.pop(next(k for k in sorted(sd) if k.startswith("blocks."))))
    with pytest.raises(CheckpointError, match=r"missing keys: 'blocks\."):
        load_dit(copy)


def test_directory_in_neither_layout(tmp_path):
    (tmp_path / "random.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither known layout"):
        load_dit(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(tmp_path / "absent")


def test_pth_is_read_without_unpickling_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_vae(path)


def test_info_describes_both_layouts(layouts):
    original, diffusers = (describe_model(p) for p in layouts)
    assert "layout: original" in original and "layout: diffusers" in diffusers
    for text in (original, diffusers):
        assert "t2v" in text and "dim=32" in text and "num_layers=2" in text
