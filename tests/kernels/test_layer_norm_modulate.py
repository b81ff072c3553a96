"""layer_norm_modulate / layer_norm_affine against their fp32 torch oracles."""
import pytest
import torch

from wan_engine.kernels import (
    layer_norm_affine,
    layer_norm_affine_ref,
    layer_norm_modulate,
    layer_norm_modulate_ref,
)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (batch, seq, dim): tiny model dim, the 1.3B and 14B dims, odd sizes (S=37 rows, dim 100 not a
# power of two nor a multiple of 16). Interpreted Triton costs ~1 ms per row, so rows stay few on
# CPU; the full-size rows run only on a GPU.
SHAPES = [
    (1, 1, 24),
    (2, 37, 24),
    (3, 4, 100),
    (2, 5, 1536),
    (1, 3, 5120),
    pytest.param(2, 4096, 1536, marks=pytest.mark.gpu),
    pytest.param(2, 1024, 5120, marks=pytest.mark.gpu),
]
# (x dtype, modulation/param dtype, output dtype): same-dtype cases, then the block's real mixes
# (fp32 residual stream in, bf16 GEMM input out; bf16 patch-embedding output in block 0).
DTYPES = [(F32, F32, F32), (F16, F16, F16), (BF16, BF16, BF16), (F32, F32, BF16), (BF16, F32, BF16)]
DTYPE_IDS = ["fp32", "fp16", "bf16", "fp32-to-bf16", "bf16-fp32mod"]


def _inputs(batch, seq, dim, x_dtype, mod_dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # A non-zero mean and spread so that centering and scaling both matter.
    x = (torch.randn(batch, seq, dim, generator=gen) * 3 + 1).to(device, x_dtype)
    shift = (torch.randn(batch, dim, generator=gen) * 0.5).to(device, mod_dtype)
    scale = (torch.randn(batch, dim, generator=gen) * 0.5).to(device, mod_dtype)
    return x, shift, scale


@pytest.mark.parametrize("x_dtype, mod_dtype, out_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch, seq, dim", SHAPES)
def test_modulate_matches_oracle(batch, seq, dim, x_dtype, mod_dtype, out_dtype, device, assert_matches_oracle):
    x, shift, scale = _inputs(batch, seq, dim, x_dtype, mod_dtype, device)
    out = layer_norm_modulate(x, shift, scale, 1e-6, out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.is_contiguous()
    ref = layer_norm_modulate_ref(x, shift, scale, 1e-6, out_dtype=F32)
    low = layer_norm_modulate_ref(x, shift, scale, 1e-6, out_dtype=out_dtype, upcast=False)
    assert_matches_oracle("layer_norm_modulate", out, ref, low)


@pytest.mark.parametrize("x_dtype, mod_dtype, out_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch, seq, dim", SHAPES)
def test_affine_matches_oracle(batch, seq, dim, x_dtype, mod_dtype, out_dtype, device, assert_matches_oracle):
    x, weight, bias = _inputs(batch, seq, dim, x_dtype, mod_dtype, device, seed=1)
    weight, bias = weight[0] + 1, bias[1 % batch]
    out = layer_norm_affine(x, weight, bias, 1e-6, out_dtype=out_dtype)
    ref = layer_norm_affine_ref(x, weight, bias, 1e-6, out_dtype=F32)
    low = layer_norm_affine_ref(x, weight, bias, 1e-6, out_dtype=out_dtype, upcast=False)
    assert_matches_oracle("layer_norm_affine", out, ref, low)


def test_each_sample_uses_its_own_modulation(device):
    x, shift, scale = _inputs(2, 5, 24, F32, F32, device)
    out = layer_norm_modulate(x, shift, scale)
    swapped = layer_norm_modulate(x, shift.flip(0), scale.flip(0))
    torch.testing.assert_close(out, layer_norm_modulate_ref(x, shift, scale), atol=1e-5, rtol=1e-5)
    assert (out - swapped).abs().amax(dim=(1, 2)).min() > 0.1


def test_strided_views(device, assert_matches_oracle):
    """Rows with gaps, a feature stride other than 1, and modulation rows taken out of the
    block's (batch, 6, dim) modulation tensor."""
    batch, seq, dim = 2, 7, 40
    gen = torch.Generator().manual_seed(2)
    padded = torch.randn(batch, 2 * seq, dim + 8, generator=gen).to(device, BF16)
    x_rows = padded[:, ::2, 4 : 4 + dim]
    x_cols = torch.randn(batch, dim, seq, generator=gen).to(device, BF16).transpose(1, 2)
    e0 = torch.randn(batch, 6, dim, generator=gen).to(device)
    shift, scale = e0[:, 0], e0[:, 1]
    for x in (x_rows, x_cols):
        assert not x.is_contiguous()
        out = layer_norm_modulate(x, shift, scale, out_dtype=BF16)
        ref = layer_norm_modulate_ref(x, shift, scale, out_dtype=F32)
        low = layer_norm_modulate_ref(x, shift, scale, out_dtype=BF16, upcast=False)
        assert_matches_oracle("layer_norm_modulate (strided)", out, ref, low)
    weight = e0[:, 2].t()[:, 0]  # a strided (dim,) view
    out = layer_norm_affine(x_rows, weight, e0[0, 3], out_dtype=F32)
    ref = layer_norm_affine_ref(x_rows, weight, e0[0, 3], out_dtype=F32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_parameter():
    x = torch.randn(2, 3, 8)
    mod = torch.randn(2, 8)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        layer_norm_modulate(x[0], mod, mod)
    with pytest.raises(ValueError, match="x must be float32"):
        layer_norm_modulate(x.to(torch.int32), mod, mod)
    with pytest.raises(ValueError, match=r"shift must have shape \(2, 8\)"):
        layer_norm_modulate(x, mod[:1], mod)
    with pytest.raises(ValueError, match="scale must be on cpu"):
        layer_norm_modulate(x, mod, mod.to("meta"))
    with pytest.raises(ValueError, match="eps must be"):
        layer_norm_modulate(x, mod, mod, eps=-1.0)
    with pytest.raises(ValueError, match="out_dtype must be"):
        layer_norm_modulate(x, mod, mod, out_dtype=torch.int8)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        layer_norm_affine(x, mod, mod[0])
