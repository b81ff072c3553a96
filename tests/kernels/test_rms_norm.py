"""rms_norm against its fp32 torch oracle."""
import pytest
import torch

from wan_engine.kernels import rms_norm, rms_norm_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# Leading shapes of any rank; dims 24 (tiny), 100 (odd), 1536 and 5120 (1.3B, 14B).
SHAPES = [
    (1, 24),
    (2, 37, 24),
    (2, 3, 4, 100),
    (2, 5, 1536),
    (3, 5120),
    pytest.param((2, 512, 1536), marks=pytest.mark.gpu),
    pytest.param((2, 4096, 5120), marks=pytest.mark.gpu),
]
# (x dtype, weight dtype, output dtype).
DTYPES = [(F32, F32, F32), (F16, F16, F16), (BF16, BF16, BF16), (BF16, F32, BF16), (F32, F32, BF16)]
DTYPE_IDS = ["fp32", "fp16", "bf16", "bf16-fp32weight", "fp32-to-bf16"]


@pytest.mark.parametrize("x_dtype, w_dtype, out_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_oracle(shape, x_dtype, w_dtype, out_dtype, device, assert_matches_oracle):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3 + 0.5).to(device, x_dtype)
    weight = (1 + 0.3 * torch.randn(shape[-1], generator=gen)).to(device, w_dtype)
    out = rms_norm(x, weight, 1e-6, out_dtype)
    assert out.shape == x.shape and out.dtype == out_dtype and out.is_contiguous()
    ref = rms_norm_ref(x, weight, 1e-6, F32)
    low = rms_norm_ref(x, weight, 1e-6, out_dtype, upcast=False)
    assert_matches_oracle("rms_norm", out, ref, low)


def test_strided_views(device, assert_matches_oracle):
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(2, 6, 56, generator=gen).to(device, BF16)
    weight = (1 + 0.3 * torch.randn(48, generator=gen)).to(device)
    cases = {
        "gapped rows": wide[:, ::2, 8:],  # flattens to a (6, 48) view with row stride 112
        "permuted leading dims": wide[..., :48].transpose(0, 1),  # needs a copy to flatten
        "feature stride 6": wide[..., :48].transpose(1, 2).contiguous().transpose(1, 2),
    }
    for name, x in cases.items():
        out = rms_norm(x, weight)
        ref = rms_norm_ref(x, weight, out_dtype=F32)
        assert_matches_oracle(f"rms_norm ({name})", out, ref, rms_norm_ref(x, weight, upcast=False))


def test_bad_inputs_name_the_parameter():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        rms_norm(torch.empty(0, 8), torch.ones(8))
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        rms_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match="weight must be float32"):
        rms_norm(x, torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps must be"):
        rms_norm(x, torch.ones(8), eps=0)
    with pytest.raises(ValueError, match="dim must be <= 8192"):
        rms_norm(torch.randn(2, 8200), torch.ones(8200))
