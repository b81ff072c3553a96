"""Attention backends against an fp64 oracle: output, log-sum-exp, key padding, errors.

Tolerance rule (flash-attention's): a backend's max error against the fp64 oracle must stay within
twice the error of the plain same-dtype torch computation (scores -> softmax -> PV, all in that
dtype) plus a small atol: 1e-6 for fp32 (a few ulps of O(1) outputs), 1e-3 for bf16 (the output
itself is rounded to bf16, 2^-9 relative, on values of magnitude ~1).
"""
import dataclasses
import math

import pytest
import torch

from wan_engine import attention as attention_module
from wan_engine.attention import (
    AUTO_ORDER,
    BACKENDS,
    PROBE_MARGIN,
    AttentionBackend,
    AttentionBackendError,
    attention,
    resolve_attention_backend,
    select_backend,
)

CPU_BACKENDS = ("sdpa", "math")
ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-3}
# lse is fp32 in every backend, but a kernel may round scale*q to the input dtype first
# (CPU flash does for bf16: relative 2^-9 on O(1) scores); measured <= 3e-5.
LSE_ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}

# (batch, Sq, Sk, heads, head_dim): odd lengths, Sq != Sk, a single query, Wan's head_dim 128.
SHAPES = [
    (1, 37, 37, 2, 12),
    (2, 37, 53, 3, 16),
    (1, 5, 37, 2, 128),
    (2, 1, 7, 1, 16),
    (1, 41, 300, 2, 128),
]


def oracle(q, k, v, scale):
    """fp64 attention on the exact input values: out [B,Sq,H,D] and lse [B,H,Sq]."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v.double())
    return out, lse


def same_dtype_torch(q, k, v, scale):
    """What plain torch gets in the input dtype: the yardstick for a backend's error."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)


def random_qkv(shape, dtype, device="cpu", seed=0):
    b, sq, sk, h, d = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, s, h, d, generator=g).to(device=device, dtype=dtype) for s in (sq, sk, sk))
    return q, k, v


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_against_oracle(backend, q, k, v, scale=None):
    d = q.shape[-1]
    eff_scale = scale if scale is not None else 1.0 / math.sqrt(d)
    out, lse = attention(q, k, v, backend=backend, return_lse=True, scale=scale)
    ref_out, ref_lse = oracle(q, k, v, eff_scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    yardstick = max_err(same_dtype_torch(q, k, v, eff_scale), ref_out)
    err = max_err(out, ref_out)
    assert err <= 2 * yardstick + ATOL[q.dtype], f"{backend}: out err {err:.3e}, torch {q.dtype} err {yardstick:.3e}"
    lse_err = max_err(lse, ref_lse)
    assert lse_err <= LSE_ATOL[q.dtype], f"{backend}: lse err {lse_err:.3e}"
    # Without return_lse the same output comes back alone.
    out_only = attention(q, k, v, backend=backend, scale=scale)
    assert isinstance(out_only, torch.Tensor)
    assert max_err(out_only, out) <= ATOL[q.dtype] + 2 * yardstick


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_fp64_oracle(backend, dtype, shape):
    q, k, v = random_qkv(shape, dtype)
    check_against_oracle(backend, q, k, v)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_custom_scale_enters_output_and_lse(backend):
    q, k, v = random_qkv((1, 9, 13, 2, 16), torch.float32, seed=1)
    check_against_oracle(backend, q, k, v, scale=0.37)
    # A different scale must change the lse: the test above would not notice an ignored scale
    # if the default happened to be used on both sides.
    _, lse_a = attention(q, k, v, backend=backend, return_lse=True, scale=0.37)
    _, lse_b = attention(q, k, v, backend=backend, return_lse=True)
    assert max_err(lse_a, lse_b) > 1e-2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lse_merges_key_blocks_like_ring_attention(backend):
    """Attention over two key halves, merged by lse, equals attention over all keys."""
    q, k, v = random_qkv((2, 11, 29, 3, 16), torch.float32, seed=2)
    o1, l1 = attention(q, k[:, :13], v[:, :13], backend=backend, return_lse=True)
    o2, l2 = attention(q, k[:, 13:], v[:, 13:], backend=backend, return_lse=True)
    lse = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - lse).transpose(1, 2).unsqueeze(-1)  # [B,Sq,H,1]
    w2 = torch.exp(l2 - lse).transpose(1, 2).unsqueeze(-1)
    merged = w1 * o1 + w2 * o2
    ref_out, ref_lse = oracle(q, k, v, 1.0 / 4.0)
    assert max_err(merged, ref_out) < 1e-5
    assert max_err(lse, ref_lse) < 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kv_len_ignores_padded_keys(backend, dtype):
    q, k, v = random_qkv((2, 19, 23, 2, 16), dtype, seed=3)
    pad = 9
    # Huge padding values: attending to even one of them would wreck the output.
    k_pad = torch.cat([k, 1e3 * torch.randn(2, pad, 2, 16).to(dtype)], dim=1)
    v_pad = torch.cat([v, 1e3 * torch.randn(2, pad, 2, 16).to(dtype)], dim=1)
    out_p, lse_p = attention(q, k_pad, v_pad, backend=backend, kv_len=23, return_lse=True)
    out_u, lse_u = attention(q, k, v, backend=backend, return_lse=True)
    # Same keys in both calls; only the strides differ, so at most a rounding step apart.
    assert max_err(out_p, out_u) <= ATOL[dtype]
    assert max_err(lse_p, lse_u) <= LSE_ATOL[dtype]
    out_all = attention(q, k_pad, v_pad, backend=backend)
    assert max_err(out_all, out_u) > 1.0  # the padding really would matter
    # kv_len equal to Sk is a no-op.
    assert max_err(attention(q, k, v, backend=backend, kv_len=23), out_u) == 0.0


def test_non_contiguous_inputs_from_fused_qkv():
    """The executor splits a fused QKV projection: q/k/v are strided views."""
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(2, 17, 3, 2, 16, generator=g)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    for backend in CPU_BACKENDS:
        check_against_oracle(backend, q, k, v)


def test_fp64_inputs_keep_fp64_lse_on_math():
    q, k, v = random_qkv((1, 7, 9, 1, 12), torch.float64, seed=5)
    out, lse = attention(q, k, v, backend="math", return_lse=True)
    ref_out, ref_lse = oracle(q, k, v, 1.0 / math.sqrt(12))
    assert lse.dtype == torch.float64
    assert max_err(out, ref_out) < 1e-12 and max_err(lse, ref_lse) < 1e-12


def test_auto_on_cpu_is_sdpa_and_backend_is_reusable():
    backend = resolve_attention_backend("auto", "cpu", torch.float32, 16)
    assert isinstance(backend, AttentionBackend) and backend.name == "sdpa"
    q, k, v = random_qkv((1, 6, 8, 2, 16), torch.float32, seed=6)
    out = backend(q, k, v)
    assert max_err(out, attention(q, k, v, backend=backend)) == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        backend.name = "math"


def test_resolved_backend_rejects_other_dtype_or_head_dim():
    backend = resolve_attention_backend("sdpa", "cpu", torch.float32, 16)
    q, k, v = random_qkv((1, 4, 4, 1, 16), torch.bfloat16)
    with pytest.raises(ValueError, match="resolved for"):
        backend(q, k, v)
    q, k, v = random_qkv((1, 4, 4, 1, 8), torch.float32)
    with pytest.raises(ValueError, match="resolved for"):
        backend(q, k, v)


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError) as err:
        resolve_attention_backend("flash", "cpu", torch.float32, 16)
    for name in BACKENDS:
        assert name in str(err.value)
    q, k, v = random_qkv((1, 4, 4, 1, 16), torch.float32)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, backend="xformers")


@pytest.mark.parametrize("name", ["fa3", "fa2", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn"])
def test_gpu_only_backends_refuse_cpu_with_reason(name):
    with pytest.raises(AttentionBackendError) as err:
        resolve_attention_backend(name, "cpu", torch.bfloat16, 128)
    msg = str(err.value)
    assert f"'{name}'" in msg
    assert "not installed" in msg or "CUDA" in msg


def test_fa2_missing_package_message():
    try:
        import flash_attn  # noqa: F401
    except Exception:
        with pytest.raises(AttentionBackendError, match="'fa2' requested but flash_attn is not installed"):
            resolve_attention_backend("fa2", "cuda", torch.bfloat16, 128)
    else:
        pytest.skip("flash_attn is installed here")


@pytest.mark.parametrize("kv_len", [0, 24, -1, 3.0, True, "5"])
def test_bad_kv_len(kv_len):
    q, k, v = random_qkv((1, 4, 23, 1, 16), torch.float32)
    with pytest.raises(ValueError, match="kv_len"):
        attention(q, k, v, backend="math", kv_len=kv_len)


def test_bad_shapes_and_dtypes():
    q, k, v = random_qkv((1, 4, 6, 2, 16), torch.float32)
    with pytest.raises(ValueError, match="4-D"):
        attention(q[0], k[0], v[0], backend="math")
    with pytest.raises(ValueError, match="same shape"):
        attention(q, k, v[:, :5], backend="math")
    with pytest.raises(ValueError, match="heads and head_dim"):
        attention(q[:, :, :1], k, v, backend="math")
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k.double(), v.double(), backend="math")
    with pytest.raises(ValueError, match="scale"):
        attention(q, k, v, backend="math", scale=-1.0)
    with pytest.raises(ValueError, match="head_dim"):
        resolve_attention_backend("math", "cpu", torch.float32, 0)
    with pytest.raises(ValueError, match="dtype"):
        resolve_attention_backend("math", "cpu", torch.int32, 16)


# ------------------------------------------------------------------------------------------
# GPU: every backend that can run on this card, bf16/fp16 at Wan-like odd shapes.
# ------------------------------------------------------------------------------------------

GPU_SHAPES = [(1, 37, 53, 2, 128), (2, 300, 257, 3, 128), (1, 45, 512, 2, 64), (1, 33, 33, 2, 12)]


def _resolve_or_skip(name, dtype, head_dim):
    try:
        return resolve_attention_backend(name, "cuda", dtype, head_dim)
    except AttentionBackendError as err:
        pytest.skip(str(err))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fa3", "fa2", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "math"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_backend_matches_oracle(name, dtype, shape):
    backend = _resolve_or_skip(name, dtype, shape[-1])
    q, k, v = random_qkv(shape, dtype, device="cuda", seed=7)
    check_against_oracle(backend, q, k, v)
    check_against_oracle(backend, q, k, v, scale=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sdpa", "sdpa-efficient", "math"])
def test_gpu_fp32_backends(name):
    backend = _resolve_or_skip(name, torch.float32, 128)
    q, k, v = random_qkv((1, 37, 70, 2, 128), torch.float32, device="cuda", seed=8)
    out, lse = backend(q, k, v, return_lse=True)
    ref_out, ref_lse = oracle(q, k, v, 1.0 / math.sqrt(128))
    # TF32 is off for SDPA by default; allow fp32 accumulation-order error only.
    assert max_err(out, ref_out) < 1e-4 and max_err(lse, ref_lse) < 1e-4


@pytest.mark.gpu
def test_gpu_fp64_sdpa_returns_lse():
    """No fused CUDA kernel takes float64: the lse comes from the explicit softmax instead."""
    backend = resolve_attention_backend("sdpa", "cuda", torch.float64, 16)
    q, k, v = random_qkv((2, 9, 13, 2, 16), torch.float64, device="cuda", seed=10)
    out, lse = backend(q, k, v, return_lse=True)
    ref_out, ref_lse = oracle(q, k, v, 0.25)
    assert lse.dtype == torch.float64 and max_err(out, ref_out) < 1e-12 and max_err(lse, ref_lse) < 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fa3", "fa2", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn"])
def test_gpu_kv_len_padding(name):
    backend = _resolve_or_skip(name, torch.bfloat16, 128)
    q, k, v = random_qkv((2, 64, 100, 2, 128), torch.bfloat16, device="cuda", seed=9)
    k_pad = torch.cat([k, 1e3 * torch.randn_like(k[:, :28])], dim=1)
    v_pad = torch.cat([v, 1e3 * torch.randn_like(v[:, :28])], dim=1)
    out_p, lse_p = backend(q, k_pad, v_pad, kv_len=100, return_lse=True)
    ref_out, ref_lse = oracle(q, k, v, 1.0 / math.sqrt(128))
    assert max_err(out_p, ref_out) < 2e-2 and max_err(lse_p, ref_lse) < 1e-2


@pytest.mark.gpu
def test_gpu_auto_probes_the_backends_that_run_here():
    available = []
    for name in AUTO_ORDER:
        try:
            resolve_attention_backend(name, "cuda", torch.bfloat16, 128)
            available.append(name)
        except AttentionBackendError:
            continue
    auto = resolve_attention_backend("auto", "cuda", torch.bfloat16, 128)
    print(f"auto: {auto.describe()}")
    probed = dict(auto.probe_ms)
    assert auto.name in available and auto.requested == "auto" and auto.label == f"{auto.name} (auto)"
    if len(available) > 1:
        # Every backend that resolves was timed (or reported as failing the probe).
        assert set(probed) | {n for n in available if f"{n} (" in auto.selection} == set(available)
        assert probed[auto.name] <= min(probed.values()) / (1 - PROBE_MARGIN)
    assert resolve_attention_backend("auto-order", "cuda", torch.bfloat16, 128).name == available[0]
    q, k, v = random_qkv((2, 300, 257, 3, 128), torch.bfloat16, device="cuda", seed=11)
    check_against_oracle(auto, q, k, v)


# ------------------------------------------------------------------------------------------
# "auto": the choice among fake backends (no GPU needed)
# ------------------------------------------------------------------------------------------

def _fake_build(unavailable=()):
    def build(name):
        if name in unavailable:
            raise AttentionBackendError(f"attention backend {name!r} requested but it is a fake that cannot run")
        return lambda q, k, v, scale, return_lse, name=name: (q, None)

    return build


def _fake_times(seconds):
    def time_call(name, impl):
        value = seconds[name]
        if isinstance(value, Exception):
            raise value
        return value

    return time_call


def test_probe_picks_the_fastest_and_reports_every_candidate():
    times = {"b": 2e-3, "c": 1e-3, "d": RuntimeError("kernel refused the shape"), "e": float("nan")}
    choice = select_backend(("a", "b", "c", "d", "e"), _fake_build({"a"}), _fake_times(times))
    assert choice.name == "c" and choice.probe_ms == (("b", 2.0), ("c", 1.0))
    assert "b 2.000 ms, c 1.000 ms" in choice.selection
    assert "d (RuntimeError: kernel refused the shape)" in choice.selection and "e (ValueError" in choice.selection
    assert "unavailable: a (it is a fake that cannot run)" in choice.selection


def test_probe_near_ties_keep_the_documented_order():
    just_inside = 1.0 - PROBE_MARGIN / 2  # faster, but by less than the margin
    choice = select_backend(("b", "c"), _fake_build(), _fake_times({"b": 1.0, "c": just_inside}))
    assert choice.name == "b"
    choice = select_backend(("b", "c"), _fake_build(), _fake_times({"b": 1.0, "c": 1.0 - 2 * PROBE_MARGIN}))
    assert choice.name == "c"


def test_without_a_probe_the_first_that_builds_wins():
    choice = select_backend(("a", "b", "c"), _fake_build({"a"}))
    assert choice.name == "b" and choice.probe_ms == () and choice.selection.startswith("order a > b > c")
    only = select_backend(("a", "b"), _fake_build({"a"}), _fake_times({"b": RuntimeError("never timed")}))
    assert only.name == "b" and "the only candidate" in only.selection  # nothing to compare: no probe
    with pytest.raises(AttentionBackendError, match="no attention backend can run here: a .*; b "):
        select_backend(("a", "b"), _fake_build({"a", "b"}))
    with pytest.raises(AttentionBackendError, match="every attention backend failed the probe: b .*c "):
        select_backend(("b", "c"), _fake_build(), _fake_times({"b": RuntimeError("x"), "c": 0.0}))


def test_cuda_auto_probes_and_auto_order_does_not(monkeypatch):
    """The wiring of resolve_attention_backend on CUDA, with fake backends and a fake timer."""
    unavailable = {"fa3", "fa2"}
    times = {"sdpa-cudnn": 1.0, "sdpa-flash": 0.5, "sdpa": 0.52}
    probes = []

    def fake_timer(device, dtype, head_dim):
        probes.append((device.type, dtype, head_dim))
        return _fake_times(times)

    fake_build = _fake_build(unavailable)
    monkeypatch.setattr(attention_module, "_build", lambda name, device, dtype, head_dim: fake_build(name))
    monkeypatch.setattr(attention_module, "_probe_timer", fake_timer)
    auto = resolve_attention_backend("auto", "cuda", torch.bfloat16, 128)
    assert (auto.name, auto.requested, auto.label) == ("sdpa-flash", "auto", "sdpa-flash (auto)")
    assert probes == [("cuda", torch.bfloat16, 128)] and dict(auto.probe_ms) == {k: 1e3 * t for k, t in times.items()}
    assert auto.describe().startswith("sdpa-flash (auto: probe sdpa-cudnn 1000.000 ms")
    ordered = resolve_attention_backend("auto-order", "cuda", torch.bfloat16, 128)
    assert ordered.name == "sdpa-cudnn" and len(probes) == 1 and ordered.probe_ms == ()
    assert "unavailable: fa3 (it is a fake that cannot run), fa2" in ordered.selection


def test_auto_on_cpu_names_how_it_chose():
    for name in ("auto", "auto-order"):
        backend = resolve_attention_backend(name, "cpu", torch.bfloat16, 64)
        assert backend.name == "sdpa" and backend.label == f"sdpa ({name})" and backend.probe_ms == ()
        assert backend.describe() == f"sdpa ({name}: order sdpa)"
    explicit = resolve_attention_backend("math", "cpu", torch.float32, 16)
    assert explicit.label == explicit.describe() == "math"
