"""channel_rms_norm_silu (the VAE's RMS_norm over channels + SiLU) against its fp32 torch oracle."""
import pytest
import torch

from wan_engine.kernels import channel_rms_norm_silu, channel_rms_norm_silu_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (B, C, T, H, W): the tiny VAE's widths, an odd one, and the Wan VAE's 96 / 384 at small frames.
SHAPES = [(1, 8, 1, 4, 4), (2, 37, 2, 5, 3), (1, 96, 2, 8, 8), (1, 384, 1, 4, 6),
          pytest.param((1, 384, 4, 60, 104), marks=pytest.mark.gpu)]
DTYPES = [(F32, F32), (BF16, BF16), (F16, F16), (BF16, F32)]  # (x, out)
DTYPE_IDS = ["fp32", "bf16", "fp16", "bf16-to-fp32"]


@pytest.mark.parametrize("silu", [True, False], ids=["silu", "norm-only"])
@pytest.mark.parametrize("x_dtype, out_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_oracle(shape, x_dtype, out_dtype, silu, device, assert_matches_oracle):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2 + 0.3).to(device, x_dtype)
    gamma = (1 + 0.3 * torch.randn(shape[1], generator=gen)).to(device, x_dtype)
    out = channel_rms_norm_silu(x, gamma, silu, out_dtype)
    assert out.shape == x.shape and out.dtype == out_dtype and out.is_contiguous()
    ref = channel_rms_norm_silu_ref(x, gamma, silu, F32)
    low = channel_rms_norm_silu_ref(x, gamma, silu, out_dtype, upcast=False)
    assert_matches_oracle("channel_rms_norm_silu", out, ref, low)


def test_zero_positions_and_strided_input(device, assert_matches_oracle):
    """An all-zero position hits the norm floor (output 0, not NaN); a sliced input is read by strides."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 6, 10, generator=gen).to(device)
    x[:, :, 0, 0, 2] = 0  # the view's first position
    view = x[:, :, :, :, 2:8]  # not contiguous
    gamma = (1 + 0.3 * torch.randn(16, generator=gen)).to(device)
    out = channel_rms_norm_silu(view, gamma)
    assert torch.isfinite(out).all() and out[:, :, 0, 0, 0].eq(0).all()
    assert_matches_oracle("channel_rms_norm_silu (strided)", out, channel_rms_norm_silu_ref(view, gamma, out_dtype=F32),
                          channel_rms_norm_silu_ref(view, gamma, upcast=False))


@pytest.mark.parametrize("x_dtype", [F32, torch.bfloat16], ids=["fp32", "bf16"])
def test_channels_last_input_gives_channels_last_output(x_dtype, device, assert_matches_oracle):
    """With the channels-last VAE lever on, the next convolution wants channels-last activations:
    the output keeps the input's layout (no conversion copy per conv) and the same values."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 24, 2, 5, 7, generator=gen).to(device, x_dtype).contiguous(memory_format=torch.channels_last_3d)
    gamma = (1 + 0.3 * torch.randn(24, generator=gen)).to(device, x_dtype)
    out = channel_rms_norm_silu(x, gamma)
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()
    assert_matches_oracle("channel_rms_norm_silu (channels-last)", out, channel_rms_norm_silu_ref(x, gamma, out_dtype=F32),
                          channel_rms_norm_silu_ref(x, gamma, upcast=False))
    assert channel_rms_norm_silu(x.contiguous(), gamma).is_contiguous()


def test_the_oracle_is_the_reference_vae_norm_and_silu():
    from wan_engine.reference.vae_blocks import RMSNorm

    norm = RMSNorm(12, images=False)
    with torch.no_grad():
        norm.gamma.copy_(torch.rand(12, 1, 1, 1) + 0.5)
    x = torch.randn(2, 12, 3, 4, 5)
    expected = torch.nn.functional.silu(norm(x))
    assert torch.equal(channel_rms_norm_silu_ref(x, norm.gamma.view(-1)), expected)


def test_bad_inputs_name_the_parameter():
    x = torch.randn(1, 8, 2, 2, 2)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        channel_rms_norm_silu(torch.empty(0, 8, 1), torch.ones(8))
    with pytest.raises(ValueError, match=r"gamma must have shape \(8,\)"):
        channel_rms_norm_silu(x, torch.ones(8, 1, 1, 1))
    with pytest.raises(ValueError, match="at most 1024 channels"):
        channel_rms_norm_silu(torch.randn(1, 2048, 2), torch.ones(2048))
