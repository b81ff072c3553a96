"""gated_residual_norm against its fp32 torch oracle."""
import pytest
import torch

from wan_engine.kernels import gated_residual_norm, gated_residual_norm_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

SHAPES = [
    (1, 1, 24),
    (2, 37, 24),
    (3, 4, 100),
    (2, 5, 1536),
    (1, 3, 5120),
    pytest.param(2, 4096, 1536, marks=pytest.mark.gpu),
    pytest.param(2, 1024, 5120, marks=pytest.mark.gpu),
]
# (residual x dtype, branch y dtype, gate/modulation dtype, normed dtype): same-dtype cases, then
# the block's real mix (fp32 residual, bf16 branch output, fp32 modulation, bf16 normed).
DTYPES = [(F32, F32, F32, F32), (F16, F16, F16, F16), (BF16, BF16, BF16, BF16), (F32, BF16, F32, BF16)]
DTYPE_IDS = ["fp32", "fp16", "bf16", "block-mix"]
# The block's three residuals: self-attn (gated, then affine norm3), cross-attn (no gate, then
# modulated norm2), FFN (gated, then the next block's modulated norm1).
KINDS = [(True, "affine"), (False, "modulate"), (True, "modulate")]
KIND_IDS = ["gate-affine", "nogate-modulate", "gate-modulate"]


def _inputs(batch, seq, dim, dtypes, gated, norm, device, seed=0):
    x_dtype, y_dtype, mod_dtype, _ = dtypes
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype, std=1.0, mean=0.0):
        return (torch.randn(*shape, generator=gen) * std + mean).to(device, dtype)

    x = rand(batch, seq, dim, dtype=x_dtype, std=3.0, mean=1.0)
    y = rand(batch, seq, dim, dtype=y_dtype, std=2.0)
    gate = rand(batch, dim, dtype=mod_dtype) if gated else None
    if norm == "affine":
        params = dict(weight=rand(dim, dtype=mod_dtype, std=0.5, mean=1.0),
                      bias=rand(dim, dtype=mod_dtype, std=0.5))
    else:
        params = dict(shift=rand(batch, dim, dtype=mod_dtype, std=0.5),
                      scale=rand(batch, dim, dtype=mod_dtype, std=0.5))
    return x, y, gate, params


def _check(x, y, gate, params, out_dtype, x_new, normed, assert_matches_oracle, tag=""):
    ref_x, ref_n = gated_residual_norm_ref(x, y, gate, **params, out_dtype=F32)
    low_x, low_n = gated_residual_norm_ref(x, y, gate, **params, out_dtype=out_dtype, upcast=False)
    assert_matches_oracle(f"gated_residual_norm x_new{tag}", x_new, ref_x, low_x)
    assert_matches_oracle(f"gated_residual_norm normed{tag}", normed, ref_n, low_n)


@pytest.mark.parametrize("gated, norm", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtypes", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch, seq, dim", SHAPES)
def test_matches_oracle(batch, seq, dim, dtypes, gated, norm, device, assert_matches_oracle):
    x, y, gate, params = _inputs(batch, seq, dim, dtypes, gated, norm, device)
    x_before = x.clone()
    x_new, normed = gated_residual_norm(x, y, gate, **params, eps=1e-6, out_dtype=dtypes[3])
    assert x_new.dtype == x.dtype and normed.dtype == dtypes[3]
    assert torch.equal(x, x_before), "x must be left alone unless inplace=True"
    _check(x, y, gate, params, dtypes[3], x_new, normed, assert_matches_oracle)


@pytest.mark.parametrize("norm", ["affine", "modulate"])
def test_inplace_updates_the_residual_stream(norm, device, assert_matches_oracle):
    dtypes = (F32, BF16, F32, BF16)
    x, y, gate, params = _inputs(2, 9, 48, dtypes, True, norm, device, seed=3)
    stream = x.clone()
    x_new, normed = gated_residual_norm(stream, y, gate, **params, inplace=True)
    assert x_new is stream and normed.dtype == BF16
    _check(x, y, gate, params, BF16, stream, normed, assert_matches_oracle, " (inplace)")


def test_strided_views(device, assert_matches_oracle):
    """x a gapped view of a wider stream, y transposed, gate and modulation rows of e0 (B, 6, dim)."""
    batch, seq, dim = 2, 6, 40
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(batch, seq, dim + 8, generator=gen).to(device)[..., 3 : 3 + dim]
    y = torch.randn(batch, dim, seq, generator=gen).to(device, BF16).transpose(1, 2)
    e0 = torch.randn(batch, 6, dim, generator=gen).to(device)
    params = dict(shift=e0[:, 3], scale=e0[:, 4])
    for inplace in (False, True):
        stream = torch.zeros(batch, seq, dim + 8, device=device)[..., 5 : 5 + dim]
        stream.copy_(x)
        x_new, normed = gated_residual_norm(stream, y, e0[:, 5], **params, inplace=inplace)
        tag = f" (strided, inplace={inplace})"
        _check(x, y, e0[:, 5], params, BF16, x_new, normed, assert_matches_oracle, tag)


def test_bad_inputs_name_the_parameter():
    x, y, gate = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 8)
    mod = dict(shift=torch.randn(2, 8), scale=torch.randn(2, 8))
    with pytest.raises(ValueError, match="either shift and scale"):
        gated_residual_norm(x, y, gate)
    with pytest.raises(ValueError, match="either shift and scale"):
        gated_residual_norm(x, y, gate, **mod, weight=torch.ones(8), bias=torch.zeros(8))
    with pytest.raises(ValueError, match="scale must be a torch.Tensor"):
        gated_residual_norm(x, y, gate, shift=mod["shift"])
    with pytest.raises(ValueError, match=r"y must have shape \(2, 3, 8\)"):
        gated_residual_norm(x, y[:, :2], gate, **mod)
    with pytest.raises(ValueError, match=r"gate must have shape \(2, 8\)"):
        gated_residual_norm(x, y, gate[:, :4], **mod)
    with pytest.raises(ValueError, match="inplace=True needs x"):
        gated_residual_norm(torch.randn(2, 1, 8).expand(2, 3, 8), y, gate, **mod, inplace=True)
