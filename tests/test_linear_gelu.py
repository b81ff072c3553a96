"""The FFN's first GEMM with its tanh-GELU fused (cuBLASLt epilogue on CUDA, two passes on CPU)."""
import pytest
import torch
import torch.nn.functional as F

from wan_engine.engine_config import EngineConfig
from wan_engine.ops import linear_gelu_epilogue, linear_gelu_torch, resolve_ops

F32, BF16 = torch.float32, torch.bfloat16


def _inputs(m, k, n, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    b = torch.randn(n, generator=gen) * 0.1
    return x.to(device, dtype), w.to(device, dtype), b.to(device, dtype)


def _oracle(x, w, b):
    return F.gelu(F.linear(x.double(), w.double(), b.double()), approximate="tanh")


def test_cpu_resolves_the_two_pass_op_and_it_is_the_tanh_gelu():
    ops = resolve_ops(EngineConfig(), "cpu", F32, 16)
    assert ops.linear_gelu is linear_gelu_torch and ops.linear_gelu_impl == "torch"
    x, w, b = _inputs(37, 24, 40, F32, "cpu")
    got = ops.linear_gelu(x, w, b)
    assert torch.equal(got, F.gelu(F.linear(x, w, b), approximate="tanh"))
    # The tanh approximation, not the exact erf GELU (which differs by ~1e-4 here).
    assert (F.gelu(F.linear(x, w, b)) - got).abs().max() > 1e-5


def test_epilogue_op_keeps_the_layout_on_meta_tensors():
    x = torch.empty(2, 7, 24, device="meta", dtype=BF16)
    out = linear_gelu_epilogue(x, torch.empty(40, 24, device="meta", dtype=BF16), torch.empty(40, device="meta", dtype=BF16))
    assert out.shape == (2, 7, 40) and out.dtype == BF16


@pytest.mark.gpu
@pytest.mark.parametrize("m, k, n", [(37, 24, 40), (1024, 1536, 8960), (257, 5120, 13824)])
def test_cuda_epilogue_is_the_tanh_gelu_within_the_bf16_rule(m, k, n):
    """Error against a float64 oracle within 2x the error of the unfused bf16 torch pair plus one
    bf16 ulp of the output scale (design.md's kernel rule); the epilogue rounds once, so it is
    usually the more accurate of the two."""
    ops = resolve_ops(EngineConfig(), "cuda", BF16, 128)
    assert ops.linear_gelu is linear_gelu_epilogue and ops.linear_gelu_impl == "epilogue"
    x, w, b = _inputs(m, k, n, BF16, "cuda")
    want = _oracle(x, w, b)
    fused = (ops.linear_gelu(x, w, b).double() - want).abs().max().item()
    unfused = (linear_gelu_torch(x, w, b).double() - want).abs().max().item()
    floor = 2 ** -8 * want.abs().max().item()
    print(f"{m}x{k}->{n}: epilogue max err {fused:.3e}, unfused {unfused:.3e}")
    assert fused <= 2 * unfused + floor
