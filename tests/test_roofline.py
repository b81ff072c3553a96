"""The analytic FLOP/byte model against hand counts, torch's FLOP counter, and scaling laws.

Hand counts are written out here from the architecture (2 FLOPs per multiply-add), not taken
from bench/roofline.py, so a wrong formula there cannot agree with itself.
"""
import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wan_engine.bench.roofline import (
    Ceilings,
    Cost,
    dit_forward_cost,
    dit_tokens,
    format_cost_table,
    roofline_point,
    floor_seconds,
    vae_decode_cost,
    vae_encode_cost,
)
from wan_engine.configs import TINY_DIT, TINY_VAE, TINY_VAE22, VAEConfig, get_preset

DIT_1_3B = get_preset("t2v-1.3B").dit
DIT_14B = get_preset("t2v-14B").dit
VAE = VAEConfig()
GEMM_COMPONENTS = ("self_attn", "self_attn_proj", "cross_attn", "cross_attn_proj", "ffn", "embed_head")


def hand_dit_flops(s, dim, ffn, layers, ctx=512):
    """Per-forward FLOPs of the transformer blocks (embeddings and head left out: < 0.1%)."""
    self_attn = 4 * s * s * dim * layers               # QK^T and PV
    qkvo = 4 * 2 * s * dim * dim * layers              # four dim x dim projections
    cross = (4 * s * ctx * dim                         # scores + PV over the context
             + 2 * 2 * s * dim * dim                   # q and o on the video tokens
             + 2 * 2 * ctx * dim * dim) * layers       # k and v on the context
    mlp = 2 * 2 * s * dim * ffn * layers
    return self_attn, self_attn + qkvo + cross + mlp


def rel(a, b):
    return abs(a - b) / abs(b)


def test_tokens_follow_official_rule():
    assert dit_tokens(DIT_1_3B, 832, 480, 81) == 21 * 30 * 52 == 32760
    assert dit_tokens(DIT_14B, 1280, 720, 81) == 21 * 45 * 80 == 75600
    assert dit_tokens(DIT_1_3B, 832, 480, 1) == 30 * 52


def test_1p3b_480p_is_283_tflop_with_198_in_self_attention():
    cost = dit_forward_cost(DIT_1_3B, 832, 480, 81, batch=1)
    self_hand, total_hand = hand_dit_flops(32760, 1536, 8960, 30)
    assert rel(cost["self_attn"].flops, self_hand) < 1e-9  # the same formula: must be exact
    assert rel(cost["self_attn"].flops, 198e12) < 0.01
    assert rel(cost.flops, total_hand) < 0.01
    assert rel(cost.flops, 283e12) < 0.01
    assert rel(cost["ffn"].flops, 2 * 2 * 32760 * 1536 * 8960 * 30) < 1e-9


def test_14b_720p_counts():
    cost = dit_forward_cost(DIT_14B, 1280, 720, 81)
    self_hand, total_hand = hand_dit_flops(75600, 5120, 13824, 40)
    assert rel(cost["self_attn"].flops, self_hand) < 1e-9
    assert rel(cost["self_attn"].flops, 4.682e15) < 0.01
    assert rel(cost.flops, total_hand) < 0.01
    assert rel(cost.flops, 6.52e15) < 0.01
    # Self-attention dominates more at 720p than at 480p (quadratic vs linear in tokens).
    small = dit_forward_cost(DIT_14B, 832, 480, 81)
    assert cost["self_attn"].flops / cost.flops > small["self_attn"].flops / small.flops


def test_i2v_and_flf2v_attend_to_clip_tokens():
    t2v = dit_forward_cost(DIT_14B, 832, 480, 81)
    i2v = dit_forward_cost(dataclasses.replace(DIT_14B, model_type="i2v", in_dim=36), 832, 480, 81)
    flf = dit_forward_cost(dataclasses.replace(DIT_14B, model_type="flf2v", in_dim=36), 832, 480, 81)
    s, d, layers = 32760, 5120, 40
    assert rel(t2v["cross_attn"].flops, 4 * s * 512 * d * layers) < 1e-9
    assert rel(i2v["cross_attn"].flops, 4 * s * (512 + 257) * d * layers) < 1e-9
    assert rel(flf["cross_attn"].flops, 4 * s * (512 + 514) * d * layers) < 1e-9
    # k_img / v_img projections on the 257 image tokens.
    extra_proj = i2v["cross_attn_proj"].flops - t2v["cross_attn_proj"].flops
    assert rel(extra_proj, 2 * 2 * 257 * d * d * layers) < 1e-9


@pytest.mark.parametrize("model_type, clip_tokens", [("t2v", 0), ("i2v", 257), ("flf2v", 514)])
def test_gemm_flops_match_torch_flop_counter_on_reference_dit(model_type, clip_tokens):
    """Every matmul/conv/SDPA of the reference WanDiT, counted by torch, equals the model's GEMM
    components (elementwise FLOPs are not counted by torch and live in norm_elementwise).
    SDPA is pinned to the math kernel: torch's counter sees its bmms, but not the fused CPU op."""
    from wan_engine.reference.dit import WanDiT

    cfg = dataclasses.replace(TINY_DIT, model_type=model_type, in_dim=16 if model_type == "t2v" else 36)
    model = WanDiT(cfg).eval()
    b, width, height, frames = 2, 48, 32, 9
    lat = (b, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    kwargs = {}
    if clip_tokens:
        kwargs = dict(clip_fea=torch.randn(b, clip_tokens, 1280), y=torch.randn(b, cfg.in_dim - 16, *lat[2:]))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(lat), torch.tensor([500.0, 20.0]), torch.randn(b, 7, cfg.text_dim), **kwargs)
    counted = counter.get_total_flops()
    cost = dit_forward_cost(cfg, width, height, frames, batch=b)
    modelled = sum(cost[name].flops for name in GEMM_COMPONENTS)
    assert counted > 0 and rel(modelled, counted) < 1e-9, (modelled, counted)


def test_scaling_with_frames_size_and_batch():
    c41 = dit_forward_cost(DIT_1_3B, 832, 480, 41)   # 11 latent frames
    c81 = dit_forward_cost(DIT_1_3B, 832, 480, 81)   # 21 latent frames
    ratio = 21 / 11
    assert rel(c81["self_attn"].flops / c41["self_attn"].flops, ratio ** 2) < 1e-9
    for name in ("self_attn_proj", "ffn"):
        assert rel(c81[name].flops / c41[name].flops, ratio) < 1e-9
    # Context k/v projections do not grow with the video: a bit less than linear.
    cross_ratio = c81["cross_attn_proj"].flops / c41["cross_attn_proj"].flops
    assert 1.0 < cross_ratio < ratio
    assert c81.bytes > c41.bytes and c81.flops > c41.flops

    wide = dit_forward_cost(DIT_1_3B, 2 * 832, 480, 81)  # twice the tokens
    assert rel(wide["self_attn"].flops / c81["self_attn"].flops, 4.0) < 1e-9
    assert rel(wide["ffn"].flops / c81["ffn"].flops, 2.0) < 1e-9

    b2 = dit_forward_cost(DIT_1_3B, 832, 480, 81, batch=2)
    assert rel(b2.flops, 2 * c81.flops) < 1e-9
    # Weights are read once per forward, whatever the batch.
    assert c81.bytes < b2.bytes < 2 * c81.bytes

    fp32 = dit_forward_cost(DIT_1_3B, 832, 480, 81, dtype_bytes=4)
    assert fp32.flops == c81.flops and fp32["ffn"].bytes == pytest.approx(2 * c81["ffn"].bytes)


def test_vae_decode_last_stage_hand_count():
    """Decoder stage 3 at full resolution: 3 residual blocks x 2 causal 3x3x3 convs, 96 -> 96."""
    f, h, w = 81, 480, 832
    cost = vae_decode_cost(VAE, w, h, f)
    hand = 3 * 2 * (2 * 96 * 96 * 27 * f * h * w)
    assert rel(cost["up3_res"].flops, hand) < 1e-9
    assert rel(cost["head"].flops, 2 * 96 * 3 * 27 * f * h * w) < 1e-9
    enc = vae_encode_cost(VAE, w, h, f)
    assert rel(enc["down0_res"].flops, 2 * 2 * (2 * 96 * 96 * 27 * f * h * w)) < 1e-9
    assert rel(enc["conv_in"].flops, 2 * 3 * 96 * 27 * f * h * w) < 1e-9


@pytest.mark.parametrize("cfg", [TINY_VAE, TINY_VAE22], ids=["wan2.1", "wan2.2"])
@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_vae_flops_match_torch_flop_counter_on_reference_vae(direction, cfg):
    """The chunked reference VAE (frame 0, then 4-frame chunks / one latent frame at a time)
    counted by torch equals the modelled conv + attention FLOPs; for the Wan2.2 VAE too (its
    2x2 patch, wider decoder and width-keeping upsamples)."""
    from wan_engine.reference.vae import WanVAE

    vae = WanVAE(cfg).eval()
    b, frames, height, width = 1, 9, 32, 48
    s = cfg.spatial_stride
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        if direction == "encode":
            vae.encode(torch.randn(b, 3, frames, height, width).clamp(-1, 1))
        else:
            vae.decode(torch.randn(b, cfg.z_dim, (frames - 1) // 4 + 1, height // s, width // s))
    counted = counter.get_total_flops()
    fn = vae_encode_cost if direction == "encode" else vae_decode_cost
    cost = fn(cfg, width, height, frames, batch=b)
    modelled = cost.flops - cost["norm_elementwise"].flops
    assert counted > 0 and rel(modelled, counted) < 1e-9, (modelled, counted)


def test_vae_cost_positive_and_scales_with_pixels():
    base = vae_decode_cost(VAE, 416, 240, 81)
    big = vae_decode_cost(VAE, 832, 480, 81)   # 4x the pixels
    for cost in (base, big, vae_encode_cost(VAE, 416, 240, 81)):
        assert all(c.flops >= 0 and c.bytes > 0 for c in cost.components)
        assert cost.flops > 0 and cost.bytes > 0
    # Convolutions are linear in pixels; the per-frame mid attention is quadratic.
    assert rel(big["up3_res"].flops / base["up3_res"].flops, 4.0) < 1e-9
    assert rel(big["mid_attn"].flops / base["mid_attn"].flops, 4.0) > 0.5
    assert 4.0 <= big.flops / base.flops < 16.0
    assert 2.0 < big.bytes / base.bytes <= 4.0
    # More frames, more work.
    assert vae_encode_cost(VAE, 416, 240, 81).flops > vae_encode_cost(VAE, 416, 240, 41).flops


def test_roofline_point_and_floor():
    cost = dit_forward_cost(DIT_1_3B, 832, 480, 81)
    ceilings = {"bf16_tflops": 800.0, "hbm_gbps": 3000.0}
    floor = max(cost.flops / 800e12, cost.bytes / 3000e9)
    assert floor_seconds(cost, ceilings) == pytest.approx(floor)
    point = roofline_point(2 * floor, cost, Ceilings(800.0, 3000.0))
    assert point.pct_of_floor == pytest.approx(50.0)
    assert point.tflops == pytest.approx(cost.flops / (2 * floor) / 1e12)
    assert point.gbps == pytest.approx(cost.bytes / (2 * floor) / 1e9)
    assert point.bound == "compute"  # attention-heavy DiT sits far right of the ridge
    # The VAE's elementwise traffic alone is memory bound.
    vae = vae_decode_cost(VAE, 832, 480, 81)
    only_elementwise = Cost("x", (vae["norm_elementwise"],))
    assert roofline_point(1.0, only_elementwise, ceilings).bound == "memory"
    with pytest.raises(ValueError, match="seconds"):
        roofline_point(0.0, cost, ceilings)
    with pytest.raises(ValueError, match="hbm_gbps"):
        floor_seconds(cost, {"bf16_tflops": 1.0})


def test_format_cost_table_lists_components_and_total():
    cost = dit_forward_cost(DIT_1_3B, 832, 480, 81)
    table = format_cost_table(cost)
    for c in cost.components:
        assert c.name in table
    assert "total" in table and "283.1" in table  # total TFLOP, 3 decimals
    with_floor = format_cost_table(cost, Ceilings(800.0, 3000.0))
    assert "floor ms" in with_floor and "memory" in with_floor and "compute" in with_floor


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=830, height=480, frames=81), "width/height"),
    (dict(width=832, height=480, frames=80), "frames"),
    (dict(width=832, height=480, frames=81, batch=0), "batch"),
    (dict(width=832, height=480, frames=81, dtype_bytes=0), "dtype_bytes"),
    (dict(width=840, height=480, frames=81), "patch"),   # latent width 105 is odd
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dit_forward_cost(DIT_1_3B, **kwargs)


def test_fused_gelu_drops_exactly_the_gelu_pass_bytes():
    """1.3B 480p, batch 2, bf16: the separate GELU reads and writes B*S*ffn_dim values per layer,
    2 * 2 * 32,760 * 8,960 * 2 bytes = 2.35 GB (the issue's "about 2.3 GB per layer")."""
    from wan_engine.bench.roofline import dit_forward_cost
    from wan_engine.configs import get_preset

    cfg = get_preset("t2v-1.3B").dit
    unfused = dit_forward_cost(cfg, 832, 480, 81, 2, dtype_bytes=2)
    fused = dit_forward_cost(cfg, 832, 480, 81, 2, dtype_bytes=2, fused_gelu=True)
    assert unfused.bytes - fused.bytes == cfg.num_layers * 2 * 2 * 32760 * 8960 * 2
    assert unfused.flops == fused.flops
