"""The CLIP image encoder of I2V / FLF2V: reference math, both checkpoint layouts, preprocessing.

The oracle is transformers' `CLIPVisionModel` (exact GELU, eps 1e-5, as the official ViT-H/14):
its penultimate hidden state is what Wan reads (`use_31_block=True`). The official-layout file is
written from the transformers weights through a name map this test defines on its own (from
`wan/modules/clip.py`), so a wrong map in the loader shows up as a mismatch.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from checkpoint_factory import clip_vision_config, official_clip_from_transformers
from wan_engine.assembly import load_image_encoder, random_image_encoder
from wan_engine.configs import ImageEncoderConfig
from wan_engine.loading import clip_format
from wan_engine.loading.clip_format import image_encoder_config_of, image_encoder_weights, read_image_encoder_state_dict
from wan_engine.loading.errors import CheckpointError
from wan_engine.loading.layout import ORIGINAL_CLIP, ModelLayout, detect_layout

CFG = ImageEncoderConfig(image_size=56, patch_size=14, dim=64, mlp_dim=128, num_heads=4, num_layers=3)
DIM, LAYERS = CFG.dim, CFG.num_layers


def _hf_config(cfg: ImageEncoderConfig) -> CLIPVisionConfig:
    return clip_vision_config(cfg)


def _official_from_transformers(hf: dict, layers: int) -> dict:
    return official_clip_from_transformers(hf, layers, DIM)


def _fake_dit(folder):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def oracle():
    torch.manual_seed(0)
    model = CLIPVisionModel(_hf_config(CFG)).eval()
    with torch.no_grad():  # every parameter random and O(1), so each one moves the output
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif p.ndim >= 2 and "embedding" not in name:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def roots(oracle, tmp_path_factory):
    """(original root, diffusers root): a stand-in DiT file each (for detect_layout) and the CLIP weights."""
    base = tmp_path_factory.mktemp("clip")
    original, diffusers = base / "original", base / "diffusers"
    _fake_dit(original)
    _fake_dit(diffusers / "transformer")
    # As the real Wan file: names under vision_model. (transformers >= 5 saves them without it).
    hf = {f"vision_model.{k}": v for k, v in oracle.state_dict().items()}
    torch.save(_official_from_transformers(hf, LAYERS), original / ORIGINAL_CLIP)
    oracle.save_pretrained(diffusers / "image_encoder")
    return original, diffusers


def _rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _assert_bit_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_reference_matches_transformers_penultimate_hidden_state(oracle, roots):
    model = load_image_encoder(roots[0] / ORIGINAL_CLIP, config=CFG)
    assert len(model.transformer) == LAYERS - 1
    pixels = torch.randn(2, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = oracle(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        got = model(pixels)
    assert got.shape == (2, CFG.tokens, DIM) and got.dtype == torch.float32
    assert _rel_l2(got, expected) < 1e-5
    # The last block is really left out: the final hidden state is far from the features.
    assert _rel_l2(got, oracle(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]) > 1e-2


def test_both_layouts_load_bit_identical_modules(roots, tmp_path, oracle):
    original, diffusers = roots
    sharded = tmp_path / "image_encoder"
    oracle.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    # As the real Wan diffusers folder: a CLIPVisionModelWithProjection saved with `vision_model.` names.
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    tensors = {f"vision_model.{k}": v.contiguous() for k, v in oracle.state_dict().items()}
    save_file(tensors | {"visual_projection.weight": torch.randn(32, DIM)}, str(prefixed / "model.safetensors"))
    (prefixed / "config.json").write_text(json.dumps(_hf_config(CFG).to_dict()))
    assert image_encoder_weights(read_image_encoder_state_dict(prefixed)[0]).ignored[clip_format.HEAD] == [
        "visual_projection.weight"]
    reference = load_image_encoder(original / ORIGINAL_CLIP, config=CFG)
    for path in (original, diffusers, diffusers / "image_encoder", sharded, prefixed):
        _assert_bit_equal(load_image_encoder(path, config=CFG), reference)
    _assert_bit_equal(load_image_encoder(diffusers), reference)  # config inferred from config.json


def test_ignored_tensors_are_reported_with_reasons(roots):
    sd, _ = read_image_encoder_state_dict(roots[0])
    ignored = image_encoder_weights(sd).ignored
    last = LAYERS - 1
    assert sorted(ignored[clip_format.LAST_BLOCK]) == sorted(k for k in sd if k.startswith(f"visual.transformer.{last}."))
    assert sorted(ignored[clip_format.TEXT]) == ["log_scale", "textual.head.0.weight", "textual.token_embedding.weight"]
    assert ignored[clip_format.HEAD] == ["visual.head"]
    assert sorted(ignored[clip_format.POST_NORM]) == ["visual.post_norm.bias", "visual.post_norm.weight"]
    assert image_encoder_weights(sd).ignored_summary().startswith(f"ignored {12 + 3 + 1 + 2} tensors")
    hf, _ = read_image_encoder_state_dict(roots[1])
    hf_ignored = image_encoder_weights(hf).ignored
    assert set(hf_ignored) == {clip_format.LAST_BLOCK, clip_format.POST_NORM} and len(hf_ignored[clip_format.LAST_BLOCK]) == 16


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps around a sample at fraction t."""
    def w(x):
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return [w(1 + t), w(t), w(1 - t), w(2 - t)]


def _bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] resampling matrix: half-pixel centres (align_corners=False), edge taps clamped."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for tap, weight in zip(range(base - 1, base + 3), _cubic_weights(src - base)):
            m[i, min(max(tap, 0), n_in - 1)] += weight
    return m


def test_preprocessing_follows_the_official_formula():
    model = random_image_encoder(CFG, seed=0)
    images = torch.rand(2, 3, 40, 72, generator=torch.Generator().manual_seed(2)) * 2 - 1
    got = model.preprocess(images)
    # Bicubic (a=-0.75) with half-pixel centres, squashed to image_size x image_size, in float64.
    rows, cols = _bicubic_matrix(40, CFG.image_size), _bicubic_matrix(72, CFG.image_size)
    resized = torch.einsum("oh,bchw,pw->bcop", rows, images.double(), cols)
    mean = torch.tensor(CFG.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CFG.std, dtype=torch.float64).view(1, 3, 1, 1)
    expected = ((resized + 1) / 2 - mean) / std
    assert got.shape == (2, 3, CFG.image_size, CFG.image_size) and got.dtype == torch.float32
    # torch computes the source coordinates in fp32 (~1e-5 here); a wrong mode, align_corners or
    # antialias moves pixels by 0.4 or more.
    assert (got.double() - expected).abs().max().item() < 1e-4
    # The official op sequence bit for bit: per image [3, 1, H, W] -> interpolate -> mul_/add_ -> Normalize.
    official = torch.cat([F.interpolate(u[:, None].transpose(0, 1), size=(CFG.image_size,) * 2, mode="bicubic",
                                        align_corners=False) for u in images])
    official = official.mul_(0.5).add_(0.5).sub_(torch.tensor(CFG.mean).view(3, 1, 1)).div_(torch.tensor(CFG.std).view(3, 1, 1))
    assert torch.equal(got, official)
    assert torch.equal(model.encode(images), model(got))


def test_random_encoder_is_reproducible_and_half_precision_stays_close():
    a, b, c = random_image_encoder(CFG, seed=5), random_image_encoder(CFG, seed=5), random_image_encoder(CFG, seed=6)
    _assert_bit_equal(a, b)
    assert not torch.equal(a.pos_embedding, c.pos_embedding)
    images = torch.rand(1, 3, 30, 30, generator=torch.Generator().manual_seed(3)) * 2 - 1
    full = a.encode(images)
    half = random_image_encoder(CFG, seed=5, dtype=torch.bfloat16)
    assert half.compute_dtype == torch.bfloat16 and half.pos_embedding.dtype == torch.bfloat16
    low = half.encode(images)
    assert low.dtype == torch.float32 and torch.isfinite(full).all()
    assert 0 < _rel_l2(low, full) < 3e-2


def test_bad_images_are_named():
    model = random_image_encoder(CFG, seed=0)
    with pytest.raises(ValueError, match=r"images must be a \[B, 3, H, W\].*\(2, 4, 8, 8\)"):
        model.preprocess(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"images must be a \[B, 3, H, W\].*\(3, 8, 8\)"):
        model.encode(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"pixels must be \[B, 3, 56, 56\].*\(1, 3, 28, 28\)"):
        model(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="floating-point"):
        model.preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_bad_checkpoints_are_named(roots, tmp_path):
    corrupt = tmp_path / "corrupt" / ORIGINAL_CLIP
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(CheckpointError, match=f"{ORIGINAL_CLIP}.*corrupt"):
        load_image_encoder(corrupt, config=CFG)
    empty = tmp_path / "image_encoder"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(_hf_config(CFG).to_dict()))
    with pytest.raises(CheckpointError, match=r"no model\*\.safetensors files"):
        load_image_encoder(empty)
    t2v = tmp_path / "t2v"
    _fake_dit(t2v)
    with pytest.raises(CheckpointError, match="no image encoder in this original layout"):
        load_image_encoder(t2v)

    sd, _ = read_image_encoder_state_dict(roots[0])
    bogus = dict(sd, **{"visual.transformer.0.attn.bogus.weight": torch.zeros(1), "visual.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unknown tensor names.*'visual\.extra'.*bogus"):
        image_encoder_weights(bogus)
    missing = {k: v for k, v in sd.items() if k != "visual.pre_norm.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: 'pre_norm\.bias'"):
        load_image_encoder(tmp_path / "missing.pth", config=CFG)
    hf, _ = read_image_encoder_state_dict(roots[1])
    no_k = {k: v for k, v in hf.items() if k != "encoder.layers.1.self_attn.k_proj.bias"}
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.self_attn\.k_proj\.bias"):
        image_encoder_weights(no_k)
    with pytest.raises(CheckpointError, match="not a CLIP vision checkpoint"):
        image_encoder_weights({"blocks.0.ffn.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="num_layers = 4 but the file holds 3 blocks"):
        load_image_encoder(roots[0] / ORIGINAL_CLIP, config=ImageEncoderConfig(**{**vars(CFG), "num_layers": 4}))


def _vit_h_official_shapes() -> dict:
    """The official file's visual.* shapes for ViT-H/14 (meta tensors), from wan/modules/clip.py."""
    dim, mlp, meta = 1280, 5120, lambda *s: torch.empty(s, device="meta")
    sd = {"visual.patch_embedding.weight": meta(dim, 3, 14, 14), "visual.cls_embedding": meta(1, 1, dim),
          "visual.pos_embedding": meta(1, 257, dim), "visual.head": meta(dim, 1024)}
    for i in range(32):
        p = f"visual.transformer.{i}."
        sd |= {p + "attn.to_qkv.weight": meta(3 * dim, dim), p + "mlp.0.weight": meta(mlp, dim),
               p + "mlp.2.weight": meta(dim, mlp)}
    return sd


def test_config_inference_on_both_layouts(roots):
    assert image_encoder_config_of(_vit_h_official_shapes()) == ImageEncoderConfig()  # heads = 1280 // 80
    with torch.device("meta"):
        vit_h = CLIPVisionModel(_hf_config(ImageEncoderConfig()))
    hf_shapes = {f"vision_model.{k}": v for k, v in vit_h.state_dict().items()}
    assert image_encoder_config_of(hf_shapes, {"num_attention_heads": 16, "hidden_act": "gelu"}) == ImageEncoderConfig()

    sd, config_json = read_image_encoder_state_dict(roots[1])
    assert config_json["num_attention_heads"] == CFG.num_heads
    assert image_encoder_config_of(sd, config_json) == CFG
    official, _ = read_image_encoder_state_dict(roots[0])
    assert image_encoder_config_of(official, {"num_attention_heads": 4}) == CFG
    with pytest.raises(CheckpointError, match="cannot infer the head count of dim 64"):
        image_encoder_config_of(official)
    with pytest.raises(CheckpointError, match="hidden_size = 96 contradicts the weights"):
        image_encoder_config_of(sd, {**config_json, "hidden_size": 96})
    with pytest.raises(CheckpointError, match="hidden_act = 'quick_gelu'"):
        image_encoder_config_of(sd, {**config_json, "hidden_act": "quick_gelu"})


def test_layouts_name_the_image_encoder(roots):
    original, diffusers = (detect_layout(r) for r in roots)
    assert original.image_encoder == roots[0] / ORIGINAL_CLIP
    assert diffusers.image_encoder == roots[1] / "image_encoder"
    assert "image encoder: " + str(roots[1] / "image_encoder") in diffusers.describe()
    legacy = ModelLayout("original", roots[0], roots[0], {}, None, None, None)  # constructions without the field
    assert legacy.image_encoder is None and "image encoder: (absent)" in legacy.describe()
