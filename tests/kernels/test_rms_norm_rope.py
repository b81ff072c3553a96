"""rms_norm_rope_qk against its fp32 torch oracle and against the official float64 complex RoPE."""
import math

import pytest
import torch

from wan_engine.kernels import rms_norm_ref, rms_norm_rope_qk, rms_norm_rope_qk_ref
from wan_engine.reference.rope import rope_apply, rope_cos_sin, rope_freqs

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (batch, seq, dim, num_heads): head_dim 12 (6 pairs: not a power of two), 16, 32 and 128 (1.3B
# with 12 heads, 14B with 40), odd dims 36 and S=37.
SHAPES = [
    (2, 37, 24, 2),
    (1, 5, 32, 2),
    (2, 7, 64, 2),
    (2, 9, 36, 3),
    (1, 3, 1536, 12),
    (1, 2, 5120, 40),
    pytest.param(2, 4096, 1536, 12, marks=pytest.mark.gpu),
    pytest.param(2, 1024, 5120, 40, marks=pytest.mark.gpu),
]
# (q/k dtype, norm weight dtype, output dtype); the table is always fp32.
DTYPES = [(F32, F32, F32), (F16, F16, F16), (BF16, BF16, BF16), (BF16, F32, BF16)]
DTYPE_IDS = ["fp32", "fp16", "bf16", "bf16-fp32weight"]


def _qkv_slices(batch, seq, dim, dtype, device, gen):
    """q and k as views into a fused QKV GEMM output (batch, seq, 3 * dim), as the executor has them."""
    qkv = (torch.randn(batch, seq, 3 * dim, generator=gen) * 2).to(device, dtype)
    return qkv[..., :dim], qkv[..., dim : 2 * dim]


def _table(seq, half_head, device, gen):
    angles = (torch.rand(seq, half_head, generator=gen, dtype=torch.float64) - 0.5) * 200
    return angles.cos().to(device, F32), angles.sin().to(device, F32)


def _weights(dim, dtype, device, gen):
    return tuple((1 + 0.3 * torch.randn(dim, generator=gen)).to(device, dtype) for _ in range(2))


@pytest.mark.parametrize("qk_dtype, w_dtype, out_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch, seq, dim, heads", SHAPES)
def test_matches_oracle(batch, seq, dim, heads, qk_dtype, w_dtype, out_dtype, device, assert_matches_oracle):
    gen = torch.Generator().manual_seed(0)
    q, k = _qkv_slices(batch, seq, dim, qk_dtype, device, gen)
    weight_q, weight_k = _weights(dim, w_dtype, device, gen)
    cos, sin = _table(seq, dim // heads // 2, device, gen)
    q_out, k_out = rms_norm_rope_qk(q, k, weight_q, weight_k, cos, sin, heads, 1e-6, out_dtype)
    shape = (batch, seq, heads, dim // heads)
    assert q_out.shape == k_out.shape == shape and q_out.is_contiguous() and k_out.dtype == out_dtype
    ref = rms_norm_rope_qk_ref(q, k, weight_q, weight_k, cos, sin, heads, 1e-6, F32)
    low = rms_norm_rope_qk_ref(q, k, weight_q, weight_k, cos, sin, heads, 1e-6, out_dtype, upcast=False)
    assert_matches_oracle("rms_norm_rope_qk q", q_out, ref[0], low[0])
    assert_matches_oracle("rms_norm_rope_qk k", k_out, ref[1], low[1])


@pytest.mark.parametrize("head_dim, grid", [(12, (2, 3, 4)), (32, (3, 2, 2)), (128, (2, 2, 3))])
def test_matches_official_complex_rope(head_dim, grid, device):
    """The oracle's real-valued rotation is itself checked here: RMSNorm then the official float64
    complex `rope_apply` on the 3D grid, with the table from the reference's `rope_cos_sin`."""
    gen = torch.Generator().manual_seed(1)
    heads, seq = 2, math.prod(grid)
    dim = heads * head_dim
    q, k = _qkv_slices(2, seq, dim, F32, device, gen)
    weight_q, weight_k = _weights(dim, F32, device, gen)
    cos, sin = rope_cos_sin(head_dim, grid, device=device)
    q_out, k_out = rms_norm_rope_qk(q, k, weight_q, weight_k, cos, sin, heads)
    freqs = rope_freqs(head_dim)
    for name, x, w, out in (("q", q, weight_q, q_out), ("k", k, weight_k, k_out)):
        normed = rms_norm_ref(x.cpu(), w.cpu()).unflatten(-1, (heads, head_dim))
        official = rope_apply(normed, grid, freqs)
        torch.testing.assert_close(out.cpu(), official, atol=2e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_contiguous_and_feature_strided_inputs(device, assert_matches_oracle):
    batch, seq, dim, heads = 2, 5, 48, 4
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(batch, seq, dim, generator=gen).to(device, BF16)
    k = torch.randn(batch, dim, seq, generator=gen).to(device, BF16).transpose(1, 2)  # feature stride seq
    weight_q, weight_k = _weights(dim, F32, device, gen)
    cos, sin = _table(seq, dim // heads // 2, device, gen)
    cos_t = cos.t().contiguous().t()  # a column-major table
    q_out, k_out = rms_norm_rope_qk(q, k, weight_q, weight_k, cos_t, sin, heads)
    ref = rms_norm_rope_qk_ref(q, k, weight_q, weight_k, cos, sin, heads, out_dtype=F32)
    low = rms_norm_rope_qk_ref(q, k, weight_q, weight_k, cos, sin, heads, upcast=False)
    assert_matches_oracle("rms_norm_rope_qk q (contiguous)", q_out, ref[0], low[0])
    assert_matches_oracle("rms_norm_rope_qk k (feature-strided)", k_out, ref[1], low[1])


def test_bad_inputs_name_the_parameter():
    q = torch.randn(1, 4, 24)
    w = torch.ones(24)
    cos = sin = torch.ones(4, 6)
    with pytest.raises(ValueError, match=r"k must have shape \(1, 4, 24\)"):
        rms_norm_rope_qk(q, q[:, :3], w, w, cos, sin, 2)
    with pytest.raises(ValueError, match="num_heads must divide dim"):
        rms_norm_rope_qk(q, q, w, w, cos, sin, 5)
    with pytest.raises(ValueError, match="num_heads must divide dim"):
        rms_norm_rope_qk(q, q, w, w, cos, sin, 8)  # head_dim 3 is odd
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        rms_norm_rope_qk(q, q, w, w, cos, sin, 0)
    with pytest.raises(ValueError, match=r"cos must have shape \(4, 6\)"):
        rms_norm_rope_qk(q, q, w, w, cos[:, :3], sin, 2)
    with pytest.raises(ValueError, match=r"weight_k must have shape \(24,\)"):
        rms_norm_rope_qk(q, q, w, w[:12], cos, sin, 2)
