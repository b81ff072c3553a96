"""The eager reference DiT against independent oracles (fp32, CPU, tiny shapes).

Oracles: diffusers' `WanTransformer3DModel` on the same random weights (a separate implementation
of the architecture), the official key layout written out by hand, and numpy/float64 formulas for
the numerics where diffusers deviates from the official code (sinusoid, RoPE precision).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wan_engine.configs import DiTConfig, get_preset
from wan_engine.loading.dit_format import diffusers_to_official_dit, infer_dit_config, official_to_diffusers_dit
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import (
    WanDiT, pad_context, patchify, sinusoidal_embedding_1d, time_conditioning, unpatchify,
)
from wan_engine.reference.rope import rope_apply, rope_apply_real, rope_cos_sin, rope_freqs



def _diffusers():
    """diffusers, for the comparisons with it only: the hand-oracle tests here (sinusoid, RoPE,
    patchify, key layout and maps) must run where diffusers is absent, as on the GPU image."""
    return pytest.importorskip("diffusers", reason="diffusers is the independent oracle for this comparison")


# Latent grid with odd F/H/W (patch grid 3 x 3 x 5 = 45 tokens) and batch 2 with distinct timesteps.
GRID_SHAPE = (3, 6, 10)
TIMESTEPS = torch.tensor([999.0, 241.0])


def tiny_config(model_type: str = "t2v", **overrides) -> DiTConfig:
    """dim 24 = 2 heads of 12; i2v-style configs take 4 noise + 4 conditioning channels."""
    fields = dict(model_type=model_type, dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20,
                  freq_dim=32, in_dim=4 if model_type == "t2v" else 8, out_dim=4)
    fields.update(overrides)
    return DiTConfig(**fields)


def build(cfg: DiTConfig, seed: int = 1, compute_dtype=torch.float32) -> tuple[WanDiT, dict]:
    model = WanDiT(cfg, compute_dtype=compute_dtype)
    sd = random_state_dict(model, seed)
    model.load_state_dict(sd, strict=True)
    return model.eval(), sd


def make_inputs(cfg: DiTConfig, batch: int = 2, context_len: int = 7, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    noise_channels = cfg.out_dim
    inputs = dict(
        x=torch.randn(batch, noise_channels, *GRID_SHAPE, generator=gen),
        t=TIMESTEPS[:batch],
        context=torch.randn(batch, context_len, cfg.text_dim, generator=gen),
    )
    if cfg.model_type != "t2v":
        inputs["y"] = torch.randn(batch, cfg.in_dim - noise_channels, *GRID_SHAPE, generator=gen)
        tokens = 514 if cfg.model_type == "flf2v" else 257
        inputs["clip_fea"] = torch.randn(batch, tokens, 1280, generator=gen)
    return inputs


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def diffusers_model(cfg: DiTConfig, official_sd: dict):
    image = cfg.model_type != "t2v"
    model = _diffusers().WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps,
        image_dim=1280 if image else None, added_kv_proj_dim=cfg.dim if image else None,
        pos_embed_seq_len=514 if cfg.model_type == "flf2v" else None,
    )
    model.load_state_dict(official_to_diffusers_dit(official_sd), strict=True)
    return model.eval()


def diffusers_forward(model, cfg: DiTConfig, inputs: dict) -> torch.Tensor:
    """diffusers expects the pipeline's pre-processing: channels concatenated, context padded to 512,
    flf2v CLIP features as [2B, 257, 1280] pairs."""
    x = inputs["x"] if "y" not in inputs else torch.cat([inputs["x"], inputs["y"]], dim=1)
    context = F.pad(inputs["context"], (0, 0, 0, cfg.text_len - inputs["context"].shape[1]))
    clip = inputs.get("clip_fea")
    if clip is not None and cfg.model_type == "flf2v":
        clip = clip.reshape(-1, 257, 1280)
    return model(x, inputs["t"], context, encoder_hidden_states_image=clip, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
# Architecture: key layout and parity with diffusers
# ---------------------------------------------------------------------------------------------

def official_layout(cfg: DiTConfig) -> dict[str, tuple]:
    """The official WanModel state-dict layout, written out from wan/modules/model.py."""
    d, f, clip = cfg.dim, cfg.ffn_dim, 1280
    linear = lambda name, o, i: {f"{name}.weight": (o, i), f"{name}.bias": (o,)}  # noqa: E731
    keys = {"patch_embedding.weight": (d, cfg.in_dim, *cfg.patch_size), "patch_embedding.bias": (d,),
            **linear("text_embedding.0", d, cfg.text_dim), **linear("text_embedding.2", d, d),
            **linear("time_embedding.0", d, cfg.freq_dim), **linear("time_embedding.2", d, d),
            **linear("time_projection.1", 6 * d, d),
            **linear("head.head", math.prod(cfg.patch_size) * cfg.out_dim, d), "head.modulation": (1, 2, d)}
    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                keys.update(linear(f"{b}.{attn}.{proj}", d, d))
            keys.update({f"{b}.{attn}.norm_q.weight": (d,), f"{b}.{attn}.norm_k.weight": (d,)})
        keys.update({f"{b}.norm3.weight": (d,), f"{b}.norm3.bias": (d,), f"{b}.modulation": (1, 6, d),
                     **linear(f"{b}.ffn.0", f, d), **linear(f"{b}.ffn.2", d, f)})
        if cfg.model_type != "t2v":
            keys.update({**linear(f"{b}.cross_attn.k_img", d, d), **linear(f"{b}.cross_attn.v_img", d, d),
                         f"{b}.cross_attn.norm_k_img.weight": (d,)})
    if cfg.model_type != "t2v":
        keys.update({"img_emb.proj.0.weight": (clip,), "img_emb.proj.0.bias": (clip,),
                     **linear("img_emb.proj.1", clip, clip), **linear("img_emb.proj.3", d, clip),
                     "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,)})
    if cfg.model_type == "flf2v":
        keys["img_emb.emb_pos"] = (1, 514, clip)
    return keys


@pytest.mark.parametrize("model_type", ["t2v", "i2v", "flf2v"])
def test_state_dict_matches_official_layout(model_type):
    cfg = tiny_config(model_type, num_layers=3)
    with torch.device("meta"):
        model = WanDiT(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_layout(cfg)


@pytest.mark.parametrize("case", ["t2v", "i2v", "flf2v", "tiny-preset"])
def test_matches_diffusers(case):
    # fp32 on both sides; they differ only where diffusers rounds differently (fp32 sinusoid and
    # RoPE table, kernel summation order): ~1e-6 measured, 1e-4 allowed.
    cfg = get_preset("tiny").dit if case == "tiny-preset" else tiny_config(case)
    ours, sd = build(cfg)
    inputs = make_inputs(cfg)
    with torch.no_grad():
        out = ours(**inputs)
        ref = diffusers_forward(diffusers_model(cfg, sd), cfg, inputs)
    assert out.shape == ref.shape == (2, cfg.out_dim, *GRID_SHAPE) and out.dtype == torch.float32
    err = rel_l2(out, ref)
    print(f"{case}: rel L2 vs diffusers = {err:.2e}")
    assert err <= 1e-4
    # Both samples differ (distinct timesteps and inputs really flow through the batch).
    assert rel_l2(out[0], out[1]) > 0.1


def test_text_padding_rows_are_attended():
    """The official pads context to text_len before the text MLP and attends to every row; the
    padded rows are non-zero after the MLP, so the output depends on text_len."""
    cfg = tiny_config()
    short, sd = build(cfg)
    long = WanDiT(tiny_config(text_len=600)).eval()
    long.load_state_dict(sd)
    inputs = make_inputs(cfg)
    with torch.no_grad():
        assert rel_l2(short(**inputs), long(**inputs)) > 1e-3
        padded = dict(inputs, context=F.pad(inputs["context"], (0, 0, 0, 9)))
        assert rel_l2(short(**padded), short(**inputs)) < 1e-6


def test_seq_len_padding_is_masked():
    cfg = tiny_config("i2v")
    model, _ = build(cfg)
    inputs = make_inputs(cfg)
    tokens = math.prod(s // p for s, p in zip(GRID_SHAPE, cfg.patch_size))
    with torch.no_grad():
        plain = model(**inputs)
        padded = model(**inputs, seq_len=tokens + 13)
    err = rel_l2(padded, plain)
    print(f"seq_len padding: rel L2 = {err:.2e}")
    assert err < 1e-6
    with pytest.raises(ValueError, match="seq_len"):
        model(**inputs, seq_len=tokens - 1)


@pytest.mark.parametrize("compute_dtype,bound", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_low_precision_compute(compute_dtype, bound):
    """GEMMs/attention in low precision, the rest fp32: error of the order of the dtype's epsilon."""
    cfg = tiny_config("i2v")
    exact, sd = build(cfg)
    low = WanDiT(cfg, compute_dtype=compute_dtype).eval()
    low.load_state_dict(sd)
    inputs = make_inputs(cfg)
    with torch.no_grad():
        out = low(**inputs)
        err = rel_l2(out, exact(**inputs))
    print(f"{compute_dtype}: rel L2 vs fp32 = {err:.2e}")
    eps = torch.finfo(compute_dtype).eps
    assert out.dtype == torch.float32 and eps / 10 < err < bound
    with pytest.raises(ValueError, match="compute_dtype"):
        WanDiT(cfg, compute_dtype=torch.float64)


def test_input_validation():
    cfg = tiny_config("i2v")
    model, _ = build(cfg)
    inputs = make_inputs(cfg)
    with pytest.raises(ValueError, match="clip_fea"):
        model(**dict(inputs, clip_fea=None))
    with pytest.raises(ValueError, match="y"):
        model(**dict(inputs, y=None))
    with pytest.raises(ValueError, match="divisible"):
        model(**dict(inputs, x=inputs["x"][..., :9], y=inputs["y"][..., :9]))
    with pytest.raises(ValueError, match="text_len"):
        model(**dict(inputs, context=torch.zeros(2, cfg.text_len + 1, cfg.text_dim)))
    t2v, _ = build(tiny_config())
    with pytest.raises(ValueError, match="clip_fea"):
        t2v(**make_inputs(tiny_config()), clip_fea=inputs["clip_fea"])


# ---------------------------------------------------------------------------------------------
# Official numerics pinned by hand (where diffusers deviates)
# ---------------------------------------------------------------------------------------------

def test_sinusoid_is_float64_cos_then_sin():
    t = np.array([999.0, 241.0, 0.0, 17.5])
    half = 128
    angles = t[:, None] * np.power(10000.0, -np.arange(half) / half)[None, :]
    expected = np.concatenate([np.cos(angles), np.sin(angles)], axis=1)
    got = sinusoidal_embedding_1d(256, torch.tensor(t))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    # An fp32 computation of the same formula (diffusers' choice) really differs at t ~ 1000, so
    # this check pins the official float64 one.
    angles32 = torch.tensor(t, dtype=torch.float32)[:, None] * torch.pow(
        10000.0, -torch.arange(half, dtype=torch.float32) / half)[None, :]
    fp32 = torch.cat([torch.cos(angles32), torch.sin(angles32)], dim=1)
    assert np.abs(fp32.double().numpy() - expected).max() > 1e-6


def test_sinusoid_differs_from_diffusers_fp32_timesteps():
    t = np.array([999.0, 241.0, 0.0, 17.5])
    timesteps = _diffusers().models.embeddings.Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    ours = sinusoidal_embedding_1d(256, torch.tensor(t))
    assert (timesteps(torch.tensor(t)).double() - ours).abs().max() > 1e-6


def test_time_conditioning_is_fp32_and_unaffected_by_compute_dtype():
    cfg = tiny_config()
    model, _ = build(cfg)
    bf16 = WanDiT(cfg, compute_dtype=torch.bfloat16)
    bf16.load_state_dict(model.state_dict())
    e, e0 = time_conditioning(TIMESTEPS, model.time_embedding, model.time_projection, cfg.freq_dim)
    # Hand formula in float64 from the parameters.
    p = {k: v.double() for k, v in model.state_dict().items()}
    s = sinusoidal_embedding_1d(cfg.freq_dim, TIMESTEPS).float().double()
    h = F.silu(s @ p["time_embedding.0.weight"].T + p["time_embedding.0.bias"])
    e_ref = h @ p["time_embedding.2.weight"].T + p["time_embedding.2.bias"]
    e0_ref = F.silu(e_ref) @ p["time_projection.1.weight"].T + p["time_projection.1.bias"]
    assert e.dtype == e0.dtype == torch.float32 and e0.shape == (2, 6, cfg.dim)
    torch.testing.assert_close(e.double(), e_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e0.double(), e0_ref.unflatten(1, (6, cfg.dim)), rtol=1e-5, atol=1e-5)
    # The low-precision model's time path is the same fp32 region (bitwise).
    e_b, e0_b = time_conditioning(TIMESTEPS, bf16.time_embedding, bf16.time_projection, cfg.freq_dim)
    assert torch.equal(e, e_b) and torch.equal(e0, e0_b)


def test_patchify_matches_conv_and_unpatchify_layout():
    gen = torch.Generator().manual_seed(3)
    video = torch.randn(2, 3, 3, 6, 10, generator=gen)
    conv = torch.nn.Conv3d(3, 5, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    tokens, grid = patchify(video, (1, 2, 2))
    assert grid == (3, 3, 5) and tokens.shape == (2, 45, 12)
    expected = conv(video).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens @ conv.weight.flatten(1).T + conv.bias, expected, rtol=1e-5, atol=1e-5)
    # unpatchify: token (f, h, w) channel (p, q, r, c) -> pixel (c, f*pt+p, h*ph+q, w*pw+r), by hand.
    pt, ph, pw, c = 1, 2, 2, 3
    head_out = torch.randn(2, 45 + 4, pt * ph * pw * c, generator=gen)  # 4 padded rows to drop
    video_out = unpatchify(head_out, grid, (pt, ph, pw), c)
    assert video_out.shape == (2, c, 3, 6, 10)
    for (f, h, w) in [(0, 0, 0), (2, 1, 4), (1, 2, 3)]:
        row = (f * 3 + h) * 5 + w
        for p, q, r, ch in [(0, 0, 0, 0), (0, 1, 0, 2), (0, 1, 1, 1)]:
            col = ((p * ph + q) * pw + r) * c + ch
            assert video_out[1, ch, f * pt + p, h * ph + q, w * pw + r] == head_out[1, row, col]
    assert pad_context(torch.ones(2, 3, 4), 5)[:, 3:].abs().sum() == 0


def test_rope_table_splits_and_frequencies():
    freqs = rope_freqs(32)
    assert freqs.dtype == torch.complex128 and freqs.shape == (1024, 16)
    # head_dim 32: real dims 12/10/10 per axis -> 6/5/5 complex channels, each axis its own table.
    pos = np.arange(1024)[:, None]
    expected = np.concatenate(
        [np.exp(1j * pos * 10000.0 ** (-np.arange(0, d, 2) / d)) for d in (12, 10, 10)], axis=1)
    np.testing.assert_allclose(freqs.numpy(), expected, rtol=0, atol=1e-9)
    assert rope_freqs(128).shape == (1024, 64)  # 22/21/21 split of the published head_dim


def test_rope_real_table_equals_complex_rope():
    head_dim, grid = 32, (3, 4, 5)
    tokens = math.prod(grid)
    x = torch.randn(2, tokens + 3, 2, head_dim, generator=torch.Generator().manual_seed(5))  # 3 padded rows
    official = rope_apply(x, grid, rope_freqs(head_dim))
    # Hand check of the complex rotation for one token: frame 2, row 1, column 4 in float64.
    c = head_dim // 2
    table = rope_freqs(head_dim)
    split = [c - 2 * (c // 3), c // 3, c // 3]
    token_freq = torch.cat([table[2, : split[0]], table[1, split[0]: split[0] + split[1]],
                            table[4, split[0] + split[1]:]])
    row = (2 * 4 + 1) * 5 + 4
    pairs = torch.view_as_complex(x[0, row, 1].double().reshape(c, 2).contiguous())
    torch.testing.assert_close(official[0, row, 1].double(), torch.view_as_real(pairs * token_freq).flatten(),
                               rtol=1e-6, atol=1e-6)
    cos, sin = rope_cos_sin(head_dim, grid)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (tokens, c)
    # Real arithmetic written out here: pair i rotates (x[2i], x[2i+1]).
    even, odd = x[:, :tokens, :, 0::2], x[:, :tokens, :, 1::2]
    cs, sn = cos[None, :, None], sin[None, :, None]
    by_hand = torch.stack([even * cs - odd * sn, even * sn + odd * cs], dim=-1).flatten(-2)
    torch.testing.assert_close(by_hand, official[:, :tokens], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rope_apply_real(x, cos, sin), official, rtol=1e-5, atol=1e-5)
    assert torch.equal(official[:, tokens:], x[:, tokens:])  # padded rows untouched
    with pytest.raises(ValueError, match="grid"):
        rope_cos_sin(head_dim, (1, 1, 1025))


# ---------------------------------------------------------------------------------------------
# diffusers key map and config inference
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["t2v", "i2v", "flf2v"])
def test_key_maps_round_trip(model_type):
    with torch.device("meta"):
        official = WanDiT(tiny_config(model_type)).state_dict()
    diff = official_to_diffusers_dit(official)
    assert len(diff) == len(official)
    assert diff["blocks.1.norm2.weight"] is official["blocks.1.norm3.weight"]  # the crossed norm names
    assert diff["scale_shift_table"] is official["head.modulation"]
    back = diffusers_to_official_dit(diff)
    assert back.keys() == official.keys() and all(back[k] is official[k] for k in official)
    assert official_to_diffusers_dit(back).keys() == diff.keys()


def test_unknown_keys_raise():
    with pytest.raises(KeyError, match="blocks.0.self_attn.qkv.weight"):
        official_to_diffusers_dit({"blocks.0.self_attn.qkv.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="transformer.proj_out.weight"):
        diffusers_to_official_dit({"transformer.proj_out.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="attn1.to_q.weight"):  # a diffusers key given as official
        official_to_diffusers_dit({"blocks.0.attn1.to_q.weight": torch.zeros(1)})


def meta_state_dict(cfg: DiTConfig) -> dict:
    with torch.device("meta"):
        return WanDiT(cfg).state_dict()


@pytest.mark.parametrize("cfg,config_json", [
    (get_preset("tiny").dit, {"num_heads": 2}),
    (tiny_config("i2v"), {"num_heads": 2, "model_type": "i2v", "in_dim": 8}),
    (tiny_config("flf2v"), {"num_attention_heads": 2, "attention_head_dim": 12}),
    (get_preset("t2v-1.3B").dit, None),
    (get_preset("t2v-14B").dit, {"num_heads": 40, "dim": 5120, "num_layers": 40}),
    (DiTConfig(model_type="i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), None),
    (DiTConfig(model_type="flf2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), None),
])
def test_infer_dit_config(cfg, config_json):
    sd = meta_state_dict(cfg)
    assert infer_dit_config(sd, config_json) == cfg
    assert infer_dit_config(official_to_diffusers_dit(sd), config_json) == cfg  # diffusers format too


def test_infer_dit_config_fallbacks_and_conflicts():
    sd = meta_state_dict(tiny_config(dim=256, num_heads=4))
    assert infer_dit_config(sd).num_heads == 2  # no published value for 256: head_dim 128
    assert infer_dit_config(sd, {"num_heads": 4, "text_len": 512, "eps": 1e-6}).num_heads == 4
    tiny = meta_state_dict(tiny_config())
    with pytest.raises(ValueError, match="num_heads"):
        infer_dit_config(tiny)
    with pytest.raises(ValueError, match="'ffn_dim'"):
        infer_dit_config(tiny, {"num_heads": 2, "ffn_dim": 41})
    with pytest.raises(ValueError, match="'in_channels'"):
        infer_dit_config(tiny, {"num_heads": 2, "in_channels": 36})
    with pytest.raises(ValueError, match="'model_type'"):
        infer_dit_config(tiny, {"num_heads": 2, "model_type": "i2v"})
    with pytest.raises(ValueError, match="'num_heads'"):
        infer_dit_config(tiny, {"num_heads": 5})
