"""LoRA files written here in every supported format, merged into the executor (fused QKV / KV
included) and the reference, against `W + s * (alpha / r) * (B @ A)` computed with plain torch."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wan_engine
from wan_engine.configs import DiTConfig
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.loading.dit_format import official_to_diffusers_dit
from wan_engine.loading.errors import CheckpointError
from wan_engine.loading.random_init import random_state_dict
from wan_engine.lora import LoraMerger, LoraSpec, describe_lora, parse_loras
from wan_engine.reference.dit import WanDiT

SMALL = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20, freq_dim=32, text_len=16)
SMALL_I2V = DiTConfig(model_type="i2v", in_dim=36, dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20,
                      freq_dim=32, text_len=16)
# Fused (q/k/v into qkv, cross k/v into kv, k_img/v_img) and unfused targets, and a conv.
TARGETS = ["blocks.0.self_attn.q.weight", "blocks.1.self_attn.k.weight", "blocks.0.self_attn.v.weight",
           "blocks.1.self_attn.o.weight", "blocks.0.cross_attn.k.weight", "blocks.1.cross_attn.v.weight",
           "blocks.0.cross_attn.q.weight", "blocks.1.ffn.0.weight", "blocks.0.ffn.2.weight", "head.head.weight"]
DIFFS = {"blocks.0.self_attn.k.bias": "diff_b", "blocks.1.norm3.weight": "diff", "blocks.0.modulation": "diff",
         "blocks.1.cross_attn.v.bias": "diff_b", "blocks.0.self_attn.norm_q.weight": "diff"}


def reference(cfg=SMALL, seed=0):
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state_dict(dit, seed))
    return dit.eval().requires_grad_(False)


def base_weights(cfg=SMALL):
    return {k: v.clone() for k, v in reference(cfg).state_dict().items()}


def lowrank(shape, rank, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rank, shape[1], generator=gen), torch.randn(shape[0], rank, generator=gen) * 0.1


def write_lora(path, fmt, rank, alpha, base, targets=TARGETS, diffs=DIFFS, seed=0):
    """A LoRA in `fmt`; returns {official name: (A, B) or diff} for the oracle."""
    tensors, truth = {}, {}
    for i, name in enumerate(targets):
        a, b = lowrank(base[name].shape, rank, seed + i)
        module = name.removesuffix(".weight")
        truth[name] = (a, b)
        if fmt == "diffusers":
            module = official_to_diffusers_dit({name: None}).popitem()[0].removesuffix(".weight")
            keys = (f"transformer.{module}.lora_A.weight", f"transformer.{module}.lora_B.weight")
        elif fmt == "peft-bare":
            module = official_to_diffusers_dit({name: None}).popitem()[0].removesuffix(".weight")
            keys = (f"{module}.lora_A.weight", f"{module}.lora_B.weight")
        elif fmt == "kohya":
            module = "lora_unet_" + module.replace(".", "_")
            keys = (f"{module}.lora_down.weight", f"{module}.lora_up.weight")
        else:  # comfyui / lightx2v
            module = "diffusion_model." + module
            keys = (f"{module}.lora_down.weight", f"{module}.lora_up.weight")
        tensors[keys[0]], tensors[keys[1]] = a.contiguous(), b.contiguous()
        if alpha is not None:
            tensors[f"{module}.alpha"] = torch.tensor(float(alpha))
    if fmt == "comfyui":
        gen = torch.Generator().manual_seed(seed + 100)
        for name, kind in diffs.items():
            delta = torch.randn(base[name].shape, generator=gen) * 0.01
            module = name.removesuffix(".bias").removesuffix(".weight") if kind == "diff_b" or name.endswith(
                ".weight") else name
            tensors[f"diffusion_model.{module}.{kind}"] = delta
            truth[name] = delta
    save_file(tensors, str(path))
    return truth


def oracle(base, truth, strength, alpha, rank):
    out = {}
    for name, part in truth.items():
        if isinstance(part, tuple):
            a, b = part
            scale = 1.0 if alpha is None else alpha / rank
            out[name] = base[name] + strength * scale * (b @ a)
        else:
            out[name] = base[name] + strength * part
    return out


def executor_weights(model) -> dict:
    return {name: view.reshape(shape).clone() for name, (view, shape) in model.official_slots().items()}


@pytest.mark.parametrize("fmt", ["diffusers", "peft-bare", "kohya", "comfyui"])
@pytest.mark.parametrize("rank, alpha", [(4, 2.0), (16, 16.0), (4, None)])
def test_merge_equals_plain_torch_bit_for_bit(tmp_path, fmt, rank, alpha):
    base = base_weights()
    truth = write_lora(tmp_path / "l.safetensors", fmt, rank, alpha, base)
    expected = oracle(base, truth, 0.7, alpha, rank)
    ex = build_executor(reference())
    before = executor_weights(ex)
    (report,) = LoraMerger(ex).apply([LoraSpec(str(tmp_path / "l.safetensors"), 0.7)])
    after = executor_weights(ex)
    assert report.targets == len(truth) and report.unmatched == ()
    for name, want in expected.items():
        assert torch.equal(after[name], want), name
    for name in set(before) - set(expected):
        assert torch.equal(after[name], before[name]), name  # untouched
    assert after["blocks.1.norm3.weight"].dtype == torch.float32


def test_reference_merge_and_stacking_and_unmerge(tmp_path):
    base = base_weights()
    t1 = write_lora(tmp_path / "a.safetensors", "kohya", 4, 2.0, base, seed=1)
    t2 = write_lora(tmp_path / "b.safetensors", "diffusers", 16, 8.0, base, seed=2)
    dit = reference()
    merger = LoraMerger(dit)
    merger.apply([(str(tmp_path / "a.safetensors"), 0.5), f"{tmp_path / 'b.safetensors'}:1.5"])
    step1 = oracle(base, t1, 0.5, 2.0, 4)
    both = oracle({**base, **step1}, t2, 1.5, 8.0, 16)  # LoRAs apply in order, rounded after each
    sd = dit.state_dict()
    for name, want in both.items():
        assert torch.equal(sd[name], want), name
    merger.apply([(str(tmp_path / "a.safetensors"), 0.5)])  # replace: b taken out, a kept
    for name, want in step1.items():
        assert torch.equal(dit.state_dict()[name], want), name
    merger.clear()
    for name, value in dit.state_dict().items():
        assert torch.equal(value, base[name]), name


def test_bf16_unmerge_is_bit_for_bit_and_fp32_regions_stay_fp32(tmp_path):
    base = base_weights()
    write_lora(tmp_path / "l.safetensors", "comfyui", 8, 4.0, base)
    ex = build_executor(reference(), EngineConfig(dtype="bf16"))
    before = executor_weights(ex)
    merger = LoraMerger(ex)
    merger.apply(["%s:1.0" % (tmp_path / "l.safetensors")])
    after = executor_weights(ex)
    assert not torch.equal(after["blocks.0.self_attn.q.weight"], before["blocks.0.self_attn.q.weight"])
    assert after["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    assert after["blocks.0.modulation"].dtype == torch.float32
    assert after["blocks.1.norm3.weight"].dtype == torch.float32
    merger.apply([])
    for name, value in executor_weights(ex).items():
        assert torch.equal(value, before[name]), name


def test_i2v_image_kv_targets(tmp_path):
    base = base_weights(SMALL_I2V)
    names = ["blocks.0.cross_attn.k_img.weight", "blocks.1.cross_attn.v_img.weight"]
    truth = write_lora(tmp_path / "l.safetensors", "diffusers", 4, 4.0, base, targets=names)
    ex = build_executor(reference(SMALL_I2V))
    LoraMerger(ex).apply([str(tmp_path / "l.safetensors")])
    after = executor_weights(ex)
    for name, want in oracle(base, truth, 1.0, 4.0, 4).items():
        assert torch.equal(after[name], want), name


def test_unknown_keys_are_named_and_foreign_loras_refused(tmp_path):
    base = base_weights()
    tensors = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 24),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(24, 4),
               "diffusion_model.blocks.0.attn.qkv.lora_down.weight": torch.randn(4, 24),
               "diffusion_model.blocks.0.attn.qkv.lora_up.weight": torch.randn(72, 4),
               "diffusion_model.blocks.7.ffn.0.lora_down.weight": torch.randn(4, 24),  # a block this model lacks
               "diffusion_model.blocks.7.ffn.0.lora_up.weight": torch.randn(40, 4),
               "some.other.tensor": torch.zeros(2)}
    save_file(tensors, str(tmp_path / "partial.safetensors"))
    (report,) = LoraMerger(reference()).apply([str(tmp_path / "partial.safetensors")])
    assert report.targets == 1
    assert "diffusion_model.blocks.0.attn.qkv.lora_down.weight" in report.unmatched
    assert "diffusion_model.blocks.7.ffn.0.lora_up.weight" in report.unmatched
    assert "some.other.tensor" in report.unmatched

    # another model size: the key and both shapes are named
    wide = {"blocks.0.self_attn.q.weight": torch.zeros(48, 48)}
    write_lora(tmp_path / "wide.safetensors", "comfyui", 4, 4.0, wide, targets=list(wide), diffs={})
    dit = reference()
    with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.q\.lora_down\.weight.*\(48, 48\).*\(24, 24\)"):
        LoraMerger(dit).apply([str(tmp_path / "wide.safetensors")])
    for name, value in dit.state_dict().items():
        assert torch.equal(value, base[name]), name  # a refused LoRA changes nothing

    save_file({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(CheckpointError, match="none of its 2 keys matches"):
        LoraMerger(dit).apply([str(tmp_path / "sdxl.safetensors")])

    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        LoraMerger(dit).apply([str(tmp_path / "corrupt.safetensors")])
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 24)},
              str(tmp_path / "half.safetensors"))
    with pytest.raises(CheckpointError, match="no matching up"):
        LoraMerger(dit).apply([str(tmp_path / "half.safetensors")])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "strong", True])
def test_strength_must_be_finite(bad):
    with pytest.raises(ValueError, match="strength"):
        parse_loras([("x.safetensors", bad)])


@pytest.mark.parametrize("text", ["x.safetensors:nan", "x.safetensors:inf", "x.safetensors:abc"])
def test_cli_strength_must_be_finite(text):
    with pytest.raises(ValueError, match="strength"):
        LoraSpec.parse(text)


def test_spec_parse():
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec("a/b.safetensors", 1.0)
    assert LoraSpec.parse("a/b.safetensors:0.25") == LoraSpec("a/b.safetensors", 0.25)
    assert LoraSpec.parse("C:/x.safetensors:-1") == LoraSpec("C:/x.safetensors", -1.0)


def test_describe(tmp_path):
    base = base_weights()
    write_lora(tmp_path / "l.safetensors", "comfyui", 16, 16.0, base)
    text = describe_lora(tmp_path / "l.safetensors")
    assert "ComfyUI/LightX2V" in text and "full deltas" in text
    assert "rank: 16; alpha 16" in text.replace("         ", "")
    assert "blocks: 2 of 2" in text.replace("         ", "") or "2 of 2" in text
    assert "self_attn.q x1" in text and "head.head.weight" in text


def test_pipeline_loras_zero_strength_and_replace(tmp_path):
    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    base = {k: v.reshape(s).clone() for k, (v, s) in pipe.dit.official_slots().items()}
    lora = {k: base[k] for k in ("blocks.0.self_attn.q.weight", "blocks.1.ffn.2.weight")}
    write_lora(tmp_path / "l.safetensors", "comfyui", 4, 4.0, lora, targets=list(lora), diffs={})
    kw = dict(size=(32, 32), num_frames=1, steps=2, seed=3)
    plain = pipe.generate("a cat", **kw)
    zero = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", loras=[(str(tmp_path / "l.safetensors"), 0.0)])
    assert np.array_equal(zero.generate("a cat", **kw), plain)
    pipe.set_loras([(str(tmp_path / "l.safetensors"), 2.0)])
    assert not np.array_equal(pipe.generate("a cat", **kw), plain)
    pipe.set_loras([])
    assert np.array_equal(pipe.generate("a cat", **kw), plain)


def test_cli_lora_info_generate_and_bad_input(tmp_path, capsys):
    from wan_engine.cli import main

    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    base = {k: v.reshape(s).clone() for k, (v, s) in pipe.dit.official_slots().items()}
    lora = {k: base[k] for k in ("blocks.0.self_attn.v.weight", "blocks.0.cross_attn.k.weight")}
    path = tmp_path / "l.safetensors"
    write_lora(path, "kohya", 4, 2.0, lora, targets=list(lora), diffs={})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kohya" in out and "rank: 4; alpha 2" in out.replace("          ", "").replace("  ", "")
    common = ["generate", "--model", "tiny", "--prompt", "a cat", "--size", "32x32", "--frames", "1", "--steps", "1",
              "--device", "cpu", "--output", str(tmp_path / "o.mp4")]
    assert main(common + ["--lora", f"{path}:0.5", "--lora", str(path)]) == 0
    capsys.readouterr()
    assert main(common + ["--lora", f"{path}:nan"]) == 2
    assert "strength" in capsys.readouterr().err
    assert main(common + ["--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "LoRA file not found" in capsys.readouterr().err
    assert main(common + ["--quant", "fp8"]) == 2
    assert "compute capability 8.9" in capsys.readouterr().err
