"""fp8 weights: the CPU emulation against an independent quantize -> dequantize -> matmul, the
quantized executor against the dense one, and the GPU `_scaled_mm` path against the emulation."""
import dataclasses

import pytest
import torch

from wan_engine.configs import DiTConfig
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import build_executor
from wan_engine.executor.fp8 import FP8, check_fp8_support, fp8_linear_emulated, fp8_linear_scaled_mm, quantize_rows
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import WanDiT

SMALL = DiTConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=2, text_dim=20, freq_dim=32, text_len=16)


def independent(x, w, b):
    """Quantize both with their own per-row amax / 448, dequantize, matmul in float64."""
    def qdq(t):
        s = t.double().abs().amax(-1, keepdim=True) / 448.0
        return (t.double() / s).to(torch.float8_e4m3fn).double() * s
    return qdq(x) @ qdq(w).t() + b.double()


@pytest.mark.parametrize("m, k, n", [(5, 123, 77), (64, 96, 160), (1, 16, 16)])
def test_emulation_matches_independent_qdq(m, k, n):
    gen = torch.Generator().manual_seed(m + k + n)
    x, w, b = torch.randn(m, k, generator=gen) * 3, torch.randn(n, k, generator=gen) / k ** 0.5, torch.randn(n, generator=gen)
    wq, ws = quantize_rows(w)
    assert wq.dtype == FP8 and ws.dtype == torch.float32 and ws.shape == (n,)
    got = fp8_linear_emulated(x, wq, b, ws).double()
    want = independent(x, w, b)
    assert ((got - want).norm() / want.norm()).item() < 1e-6
    exact = x.double() @ w.double().t() + b.double()
    err = ((got - exact).norm() / exact.norm()).item()
    assert 1e-4 < err < 0.06  # e4m3's 3 mantissa bits: a few percent, not zero


def test_zero_rows_quantize_to_zero():
    q, s = quantize_rows(torch.zeros(3, 16))
    assert torch.equal(q.float(), torch.zeros(3, 16)) and torch.isfinite(s).all()


def test_quantized_executor_close_to_dense_and_fp32_regions_untouched():
    dit = WanDiT(SMALL)
    dit.load_state_dict(random_state_dict(dit, 0))
    dense = build_executor(dit)
    quant = build_executor(dit)
    quant.quantize_weights("fp8-emulated")
    gen = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([500.0]), torch.randn(1, 7, 20, generator=gen)
    a, b = dense(x, t, ctx), quant(x, t, ctx)
    err = ((a - b).norm() / a.norm()).item()
    assert 0 < err < 0.1, err
    store = quant.blocks[0]
    assert store.qkv_weight.dtype == FP8 and store.ffn2_weight.dtype == FP8 and store.qkv_scale.dtype == torch.float32
    assert store.norm_q.dtype == torch.float32 and quant.globals.head_weight.dtype == torch.float32
    assert quant.contexts[0].kv_weight.dtype == torch.float32  # cross K/V: once per request, dense
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize_weights("fp8-emulated")


def test_fp8_refused_without_hardware():
    with pytest.raises(ValueError, match="compute capability 8.9"):
        check_fp8_support("fp8", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="quant must be"):
        check_fp8_support("int4", torch.device("cpu"), torch.bfloat16)


def test_lora_after_quantization_is_refused(tmp_path):
    from wan_engine.lora import LoraMerger

    dit = WanDiT(SMALL)
    dit.load_state_dict(random_state_dict(dit, 0))
    ex = build_executor(dit)
    ex.quantize_weights("fp8-emulated")
    with pytest.raises(ValueError, match="merge before quantization"):
        LoraMerger(ex).apply([])


def _cpu_scaled_mm_rowwise() -> bool:
    """Whether this torch runs `_scaled_mm` with row-wise scales on the CPU (2.13's oneDNN path does)."""
    try:
        a = torch.ones(16, 16).to(FP8)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


@pytest.mark.skipif(not _cpu_scaled_mm_rowwise(), reason="this torch has no CPU _scaled_mm with row-wise scales")
@pytest.mark.parametrize("shape, k, n, bias", [((2, 77), 1536, 4608, True), ((3, 5, 32), 1536, 8960, False),
                                               ((130,), 8960, 1536, True)])
def test_scaled_mm_call_matches_emulation_on_cpu(shape, k, n, bias):
    """The `_scaled_mm` call itself (operand layout, scale shapes, bias in the epilogue, batch
    dims) against the emulation, on the CPU kernel: both accumulate the same exact fp8 products in
    fp32 and round once to bf16, so they differ by the accumulation order only, at most one bf16
    ulp (2^-7 relative) per element, plus where they cancel toward zero the two fp32 sums' order
    error, 2*K*2^-24 of the products' magnitude. The GPU test below checks the Hopper kernel."""
    gen = torch.Generator().manual_seed(k + n)
    x = (torch.randn(*shape, k, generator=gen) * 2).bfloat16()
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    wq, ws = quantize_rows(w)
    got, want = fp8_linear_scaled_mm(x, wq, b, ws), fp8_linear_emulated(x, wq, b, ws)
    assert got.shape == want.shape == (*shape, n) and got.dtype == torch.bfloat16
    got, want = got.float(), want.float()
    xq, xs = quantize_rows(x.reshape(-1, k))
    magnitude = ((xq.float().abs() @ wq.float().abs().t()) * xs[:, None] * ws[None, :]).reshape(got.shape)
    assert (got - want).abs().le(want.abs() * 2 ** -7 + magnitude * 2 * k * 2 ** -24).all()
    assert ((got - want).norm() / want.norm()).item() < 2 ** -9


@pytest.mark.gpu
@pytest.mark.parametrize("m, k, n", [(4096, 1536, 4608), (333, 5120, 13824)])
def test_scaled_mm_matches_emulation(m, k, n):
    device = torch.device("cuda")
    check_fp8_support("fp8", device, torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, generator=gen, device=device).bfloat16()
    w = (torch.randn(n, k, generator=gen, device=device) / k ** 0.5).bfloat16()
    b = torch.randn(n, generator=gen, device=device).bfloat16()
    wq, ws = quantize_rows(w)
    got, want = fp8_linear_scaled_mm(x, wq, b, ws).float(), fp8_linear_emulated(x, wq, b, ws).float()
    assert ((got - want).norm() / want.norm()).item() < 1e-2  # bf16 output rounding, accumulation order


def test_fp8_bench_weight_bytes_are_the_executors_buffers():
    """The fp8 suite's weight figures: a 1-layer build scaled to 2 layers equals the 2-layer
    executor's measured bytes, and fp8 stores the GEMM weights in 1 byte (+ one fp32 scale per row)
    where bf16 takes 2."""
    from wan_engine.bench.suites.fp8 import dit_weight_bytes
    from wan_engine.executor.fp8 import QUANTIZED, weight_bytes

    bf16 = EngineConfig(dtype=torch.bfloat16)
    figures = {}
    for quant in (None, "fp8-emulated"):
        built = {}
        for layers in (1, 2):
            dit = WanDiT(dataclasses.replace(SMALL, num_layers=layers))
            dit.load_state_dict(random_state_dict(dit, 0))
            ex = build_executor(dit, bf16)
            if quant is not None:
                ex.quantize_weights(quant)
            built[layers] = ex
        full = dit_weight_bytes(built[2], 2)
        assert dit_weight_bytes(built[1], 2) == full and full["model"] == weight_bytes(built[2])
        figures[quant] = full
    rows = sum(getattr(built[2].blocks[0], name).shape[0] for name in QUANTIZED)  # output channels per layer
    gemm_numel = figures[None]["gemm"] // 2  # bf16: 2 bytes per value
    assert figures["fp8-emulated"]["gemm"] == gemm_numel + 2 * rows * 4  # 1 byte per value, fp32 scales
    saved = figures[None]["model"] - figures["fp8-emulated"]["model"]
    assert saved == figures[None]["gemm"] - figures["fp8-emulated"]["gemm"]  # nothing else changed size
    print(f"SMALL (2 layers) DiT weights: bf16 {figures[None]['model']} B -> fp8 {figures['fp8-emulated']['model']} B; "
          f"block GEMMs {figures[None]['gemm']} -> {figures['fp8-emulated']['gemm']} B")
