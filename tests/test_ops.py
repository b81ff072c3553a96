"""Ops dispatch: the fused-torch ops against float64 formulas, Triton vs torch op sets, resolution
rules and errors, and the CPU "torch" path running with triton absent."""
import dataclasses
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from wan_engine.attention import AttentionBackendError
from wan_engine.engine_config import EngineConfig
from wan_engine.ops import OP_NAMES, OpSet, resolve_ops
from wan_engine.reference.rope import rope_apply, rope_cos_sin, rope_freqs

F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
EPS = 1e-6


def _triton_interpreting() -> bool:
    triton = pytest.importorskip("triton")
    return bool(triton.knobs.runtime.interpret)


def _torch_ops() -> OpSet:
    return resolve_ops(EngineConfig(ops="torch"), "cpu", F32, 12)


# ---- float64 oracles written from the formulas, independent of both implementations ----------

def _ln64(x):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + EPS)


def _rms64(x, weight):
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * weight.double()


def _inputs(batch, seq, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, offset=0.0):
        return (offset + scale * torch.randn(*shape, generator=gen)).to(dtype)

    return dict(x=rnd(batch, seq, dim, scale=3.0, offset=0.5), y=rnd(batch, seq, dim),
                shift=rnd(batch, dim, scale=0.3), scale=rnd(batch, dim, scale=0.3), gate=rnd(batch, dim, scale=0.5),
                weight=rnd(dim, scale=0.2, offset=1.0), bias=rnd(dim, scale=0.2))


def _check(name, got, oracle64, dtype):
    """One rounding of an fp32 computation into `dtype`: within one ulp of |oracle| (+ fp32 noise)."""
    err = (got.double() - oracle64).abs().max().item()
    bound = torch.finfo(dtype).eps * max(1.0, oracle64.abs().max().item()) + 1e-5
    assert err <= bound, f"{name} ({dtype}): max error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch, seq, dim", [(2, 37, 24), (1, 5, 36), (3, 2, 64)])
def test_torch_norm_ops_match_float64_formulas(batch, seq, dim, dtype):
    ops, t = _torch_ops(), _inputs(batch, seq, dim, dtype)
    x, y, shift, scale, gate, weight, bias = (t[k] for k in ("x", "y", "shift", "scale", "gate", "weight", "bias"))
    modulate = lambda v: _ln64(v) * (1 + scale.double()[:, None]) + shift.double()[:, None]  # noqa: E731

    _check("layer_norm_modulate", ops.layer_norm_modulate(x, shift, scale, EPS), modulate(x), dtype)
    _check("layer_norm_affine", ops.layer_norm_affine(x, weight, bias, EPS), _ln64(x) * weight.double() + bias.double(),
           dtype)
    _check("rms_norm", ops.rms_norm(x, weight, EPS), _rms64(x, weight), dtype)

    # The residual stream is fp32; the branch output y and the normed output are `dtype`.
    x32 = x.float()
    x_new, normed = ops.gated_residual_norm(x32, y, gate, shift=shift, scale=scale, eps=EPS)
    x_new64 = x32.double() + y.double() * gate.double()[:, None]
    assert x_new.dtype == F32 and normed.dtype == dtype
    _check("gated_residual_norm x_new", x_new, x_new64, F32)
    _check("gated_residual_norm normed", normed, modulate(x_new), dtype)
    x_new, normed = ops.gated_residual_norm(x32, y, None, weight=weight, bias=bias, eps=EPS, out_dtype=F32)
    _check("residual + affine norm", normed, _ln64(x32.double() + y.double()) * weight.double() + bias.double(), F32)


@pytest.mark.parametrize("head_dim, grid", [(12, (2, 3, 4)), (16, (3, 1, 5)), (32, (1, 2, 3))])
def test_torch_rms_norm_rope_matches_official_complex_rope(head_dim, grid):
    """RMSNorm over the whole dim then RoPE, against the official float64 complex rotation."""
    heads, seq = 2, math.prod(grid)
    dim = heads * head_dim
    t = _inputs(2, seq, 3 * dim, F32, seed=1)
    q, k = t["x"][..., :dim], t["x"][..., dim: 2 * dim]  # views into a fused QKV output
    wq, wk = t["weight"][:dim], t["weight"][dim: 2 * dim]
    cos, sin = rope_cos_sin(head_dim, grid)
    q_out, k_out = _torch_ops().rms_norm_rope_qk(q, k, wq, wk, cos, sin, heads, EPS)
    for got, x, w in ((q_out, q, wq), (k_out, k, wk)):
        assert got.shape == (2, seq, heads, head_dim)
        official = rope_apply(_rms64(x, w).unflatten(-1, (heads, head_dim)), grid, rope_freqs(head_dim))
        torch.testing.assert_close(got, official.float(), atol=2e-5, rtol=1e-5)


def test_triton_and_torch_op_sets_agree():
    """Both op sets on the same inputs (fp32, Triton through the interpreter on CPU)."""
    if not _triton_interpreting() and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tri = resolve_ops(EngineConfig(ops="triton"), device, F32, 12)
    ref = resolve_ops(EngineConfig(ops="torch"), device, F32, 12)
    assert tri.backend == "triton" and ref.backend == "torch"
    t = {k: v.to(device) for k, v in _inputs(2, 7, 24, F32, seed=2).items()}
    cos, sin = (v.to(device) for v in rope_cos_sin(12, (1, 1, 7)))
    calls = [
        ("layer_norm_modulate", lambda o: o.layer_norm_modulate(t["x"], t["shift"], t["scale"], EPS)),
        ("layer_norm_affine", lambda o: o.layer_norm_affine(t["x"], t["weight"], t["bias"], EPS)),
        ("gated_residual_norm", lambda o: o.gated_residual_norm(t["x"], t["y"], t["gate"], shift=t["shift"],
                                                                 scale=t["scale"], eps=EPS)),
        ("rms_norm_rope_qk", lambda o: o.rms_norm_rope_qk(t["x"], t["y"], t["weight"], t["weight"], cos, sin, 2, EPS)),
        ("rms_norm", lambda o: o.rms_norm(t["x"], t["weight"], EPS)),
    ]
    assert [name for name, _ in calls] == list(OP_NAMES)
    for name, call in calls:
        got, want = call(tri), call(ref)
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (got, want))):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6, msg=lambda m: f"{name}: {m}")


def test_resolution_rules():
    auto = resolve_ops(EngineConfig(), "cpu", F32, 16)
    assert auto.backend == "torch"  # interpreted Triton is never the CPU default
    assert auto.attention.name == "sdpa" and auto.attention.dtype == F32 and auto.attention.head_dim == 16
    assert resolve_ops(EngineConfig(attention="math"), "cpu", BF16, 16).attention.name == "math"
    if _triton_interpreting():
        assert resolve_ops(EngineConfig(ops="triton"), "cpu", F32, 16).backend == "triton"
    with pytest.raises(ValueError, match="engine_config must be an EngineConfig"):
        resolve_ops({"ops": "torch"}, "cpu", F32, 16)


@pytest.mark.parametrize("backend", ["fa3", "fa2", "sdpa-flash", "sdpa-cudnn"])
def test_unavailable_attention_backend_is_a_clear_error(backend):
    with pytest.raises(AttentionBackendError, match=f"attention backend '{backend}' requested but"):
        resolve_ops(EngineConfig(attention=backend), "cpu", BF16, 128)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_triton_ops_on_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="ops backend 'triton' requested but CUDA is not available"):
        resolve_ops(EngineConfig(ops="triton"), "cuda", BF16, 128)


@pytest.mark.parametrize("kwargs, match", [
    (dict(engine="eager"), "engine must be one of executor, reference"),
    (dict(attention="flash"), "attention must be one of auto, fa3"),
    (dict(ops="cuda"), "ops must be one of auto, triton, torch"),
    (dict(cfg_batch=1), "cfg_batch must be True or False"),
    (dict(compile="no"), "compile must be True or False"),
    (dict(dtype="fp64"), "dtype must be None, one of"),
    (dict(dtype=torch.float64), "dtype must be None, torch.float32"),
])
def test_engine_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)


def test_engine_config_normalises_and_is_frozen():
    assert EngineConfig(dtype="bf16") == EngineConfig(dtype=torch.bfloat16)
    assert hash(EngineConfig(dtype="fp32")) == hash(EngineConfig(dtype=F32))
    assert EngineConfig().resolved_dtype(BF16) == BF16
    assert EngineConfig(dtype="fp16").resolved_dtype(BF16) == torch.float16
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineConfig().ops = "triton"


def _run_python(script: str, tmp_path, drop_env=()) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    # cwd outside the repository: the child imports the installed package only.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_torch_path_runs_without_triton(tmp_path):
    """With triton made unimportable, the CPU executor runs, and asking for Triton says why not."""
    script = """
        import sys
        # As if triton were not installed: `import triton` fails and importlib.util.find_spec returns
        # None (the CUDA build of torch probes it that way; a finder that raises broke `import torch`).
        sys.modules["triton"] = None
        import torch
        from wan_engine.configs import get_preset
        from wan_engine.engine_config import EngineConfig
        from wan_engine.executor import build_executor
        from wan_engine.loading.random_init import random_state_dict
        from wan_engine.ops import resolve_ops
        from wan_engine.reference.dit import WanDiT
        ref = WanDiT(get_preset("tiny").dit)
        ref.load_state_dict(random_state_dict(ref, 0))
        ex = build_executor(ref, EngineConfig())
        x, t, ctx = torch.randn(1, 16, 1, 4, 6), torch.tensor([500.0]), torch.randn(1, 3, 32)
        with torch.no_grad():
            err = ((ex(x, t, ctx) - ref(x, t, ctx)).norm() / ref(x, t, ctx).norm()).item()
        assert ex.ops.backend == "torch" and err < 1e-5, err
        assert not any((m == "triton" or m.startswith("triton.")) and sys.modules[m] is not None for m in sys.modules)
        try:
            resolve_ops(EngineConfig(ops="triton"), "cpu", torch.float32, 16)
        except ValueError as e:
            print(e)
    """
    result = _run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ops backend 'triton' requested but triton is not installed" in result.stdout


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(tmp_path):
    script = """
        import torch
        from wan_engine.engine_config import EngineConfig
        from wan_engine.ops import resolve_ops
        try:
            resolve_ops(EngineConfig(ops="triton"), "cpu", torch.float32, 16)
        except ValueError as e:
            print(e)
    """
    result = _run_python(script, tmp_path, drop_env=("TRITON_INTERPRET",))
    assert result.returncode == 0, result.stderr
    assert "ops backend 'triton' requested but Triton kernels need a CUDA device" in result.stdout
    assert "TRITON_INTERPRET=1" in result.stdout
