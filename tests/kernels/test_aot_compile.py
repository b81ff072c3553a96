"""Every kernel compiles ahead of time for an H100 (sm_90) at the real model sizes, GPU or not.

The interpreter runs kernels as Python and so misses what only the compiler sees (layouts, register
pressure, unsupported ops). Under TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)
`@triton.jit` yields interpreter objects the compiler cannot take, so the compiles run in one
child process with the interpreter off; this file is also that child's script.

Each case lists the kernel's arguments as the Wan block passes them at 480p (batch 2, 32760
tokens) and specializes them the way a Triton launch does: integers equal to 1 become constants,
integers divisible by 16 and pointers (fresh PyTorch allocations are 256-byte aligned) get a
divisibility-16 hint.
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from wan_engine.kernels._launch import row_block_and_warps

MODELS = {"1.3B": (1536, 12), "14B": (5120, 40)}
BATCH, SEQ, TEXT_LEN, EPS = 2, 32760, 512, 1e-6
F32, BF16 = torch.float32, torch.bfloat16
H100 = ("cuda", 90, 32)


def _cases():
    """case id -> (module, kernel name, {argument: example value}, num_warps); dtypes stand for pointers."""
    cases = {}
    for model, (dim, heads) in MODELS.items():
        block, warps = row_block_and_warps(dim)
        x = dict(stride_xb=SEQ * dim, stride_xs=dim, stride_xd=1)  # contiguous residual stream
        e0_row = (6 * dim, 1)  # a (batch, dim) row of the (batch, 6, dim) modulation tensor
        ln = dict(x_ptr=F32, mult_ptr=F32, add_ptr=F32, out_ptr=BF16, S=SEQ, D=dim, eps=EPS, **x)
        cases[f"layer_norm_modulate-{model}"] = ("layer_norm_modulate", "_layer_norm_modulate_kernel", dict(
            ln, stride_mb=e0_row[0], stride_md=1, stride_ab=e0_row[0], stride_ad=1, AFFINE=False, BLOCK=block,
        ), warps)
        cases[f"layer_norm_affine-bf16-{model}"] = ("layer_norm_modulate", "_layer_norm_modulate_kernel", dict(
            ln, x_ptr=BF16, stride_mb=0, stride_md=1, stride_ab=0, stride_ad=1, AFFINE=True, BLOCK=block,
        ), warps)
        for kind, has_gate, affine in [("gate-affine", True, True), ("nogate-modulate", False, False),
                                       ("gate-modulate", True, False)]:
            mod_b = 0 if affine else e0_row[0]
            cases[f"gated_residual_norm-{kind}-{model}"] = ("gated_residual", "_gated_residual_norm_kernel", dict(
                x_ptr=F32, y_ptr=BF16, gate_ptr=F32, x_new_ptr=F32, normed_ptr=BF16, mult_ptr=F32, add_ptr=F32,
                S=SEQ, D=dim, eps=EPS, **x,
                stride_yb=SEQ * dim, stride_ys=dim, stride_yd=1,
                stride_gb=e0_row[0] if has_gate else 0, stride_gd=1 if has_gate else 0,
                stride_nb=SEQ * dim, stride_ns=dim, stride_nd=1,
                stride_mb=mod_b, stride_md=1, stride_ab=mod_b, stride_ad=1,
                HAS_GATE=has_gate, AFFINE=affine, BLOCK=block,
            ), warps)
        half_head = dim // heads // 2
        qkv = dict(zip(("b", "s", "d"), (SEQ * 3 * dim, 3 * dim, 1)))  # q, k: slices of the QKV output
        cases[f"rms_norm_rope_qk-{model}"] = ("rms_norm_rope", "_rms_norm_rope_qk_kernel", dict(
            q_ptr=BF16, k_ptr=BF16, weight_q_ptr=BF16, weight_k_ptr=BF16, cos_ptr=F32, sin_ptr=F32,
            q_out_ptr=BF16, k_out_ptr=BF16, S=SEQ, D=dim, eps=EPS,
            stride_qb=qkv["b"], stride_qs=qkv["s"], stride_qd=qkv["d"],
            stride_kb=qkv["b"], stride_ks=qkv["s"], stride_kd=qkv["d"],
            stride_wq=1, stride_wk=1, stride_cs=half_head, stride_cp=1, stride_ss=half_head, stride_sp=1,
            HALF_HEAD=half_head, BLOCK_PAIRS=block // 2,
        ), warps)
        cases[f"rms_norm-{model}"] = ("rms_norm", "_rms_norm_kernel", dict(
            x_ptr=BF16, weight_ptr=BF16, out_ptr=BF16, D=dim, eps=EPS,
            stride_xn=dim, stride_xd=1, stride_w=1, BLOCK=block,
        ), warps)
    # The VAE decoder's widest norm + SiLU: 384 channels over 4 frames of the 720p tail's 90x160.
    from wan_engine.kernels.channel_rms_norm_silu import _block_s

    # Contiguous (channel stride = positions) and channels-last-3d (channel stride 1) activations.
    for channels, dtype, layout in ((384, F32, "contiguous"), (96, BF16, "channels-last")):
        block_c, block_s, warps = _block_s(channels)
        positions = 4 * 90 * 160
        stride_c, stride_s = (positions, 1) if layout == "contiguous" else (1, channels)
        cases[f"channel_rms_norm_silu-{channels}-{'fp32' if dtype is F32 else 'bf16'}-{layout}"] = (
            "channel_rms_norm_silu", "_channel_rms_norm_silu_kernel", dict(
                x_ptr=dtype, gamma_ptr=dtype, out_ptr=dtype, C=channels, S=positions, scale=channels ** 0.5,
                stride_xb=channels * positions, stride_xc=stride_c, stride_xs=stride_s, stride_g=1,
                stride_ob=channels * positions, stride_oc=stride_c, stride_os=stride_s,
                SILU=True, BLOCK_C=block_c, BLOCK_S=block_s,
            ), warps)
    return cases


def _specialize(kernel, args):
    """ASTSource inputs for `args`, specialized as a Triton launch would specialize them."""
    names = [p.name for p in kernel.params]
    if sorted(names) != sorted(args):
        raise ValueError(f"case arguments {sorted(args)} do not match {kernel.__name__}'s {names}")
    ptr_types = {F32: "*fp32", torch.float16: "*fp16", BF16: "*bf16"}
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        value = args[param.name]
        if param.is_constexpr or (type(value) is int and value == 1):
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        if isinstance(value, torch.dtype):
            signature[param.name] = ptr_types[value]
            aligned = True
        elif type(value) is int:
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        elif isinstance(value, float):
            signature[param.name], aligned = "fp32", False
        else:
            raise ValueError(f"{param.name}: cannot specialize {value!r}")
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _resource_usage(cubin: bytes) -> dict:
    """Registers and local memory (spills) per thread from cuobjdump, or {} where it is missing."""
    try:
        from triton import knobs

        tool = knobs.nvidia.cuobjdump.path
    except (ImportError, AttributeError):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        result = subprocess.run([tool, "-res-usage", handle.name], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if "REG:" in line]
    if not lines:
        return {}
    fields = dict(item.split(":", 1) for item in lines[0].split())
    return {"regs": int(fields["REG"]), "local": int(fields["LOCAL"]), "stack": int(fields["STACK"])}


def _compile_all() -> dict:
    """Child process: compile every case, report per case (never raises for one bad case)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = {}
    for case_id, (module, kernel_name, args, num_warps) in _cases().items():
        try:
            kernel = getattr(importlib.import_module(f"wan_engine.kernels.{module}"), kernel_name)
            signature, constexprs, attrs = _specialize(kernel, args)
            source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(source, target=GPUTarget(*H100), options={"num_warps": num_warps})
            cubin = compiled.asm.get("cubin", b"")
            results[case_id] = dict(ok=True, cubin_bytes=len(cubin), shared=compiled.metadata.shared,
                                    num_warps=compiled.metadata.num_warps, **_resource_usage(cubin))
        except Exception as error:  # reported per case to the parent
            results[case_id] = dict(ok=False, error=f"{type(error).__name__}: {error}"[-3000:])
    return results


@pytest.fixture(scope="module")
def compiled():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    if child.returncode != 0:
        pytest.fail(f"AOT compile child failed (rc {child.returncode}):\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case_id", list(_cases()))
def test_compiles_for_h100(case_id, compiled):
    result = compiled[case_id]
    assert result["ok"], f"{case_id} did not compile for sm_90:\n{result['error']}"
    assert result["cubin_bytes"] > 0, f"{case_id}: no cubin produced"
    assert result["num_warps"] == _cases()[case_id][3]
    if "local" in result:  # register spills show up as local memory
        assert result["local"] == 0 and result["stack"] == 0, f"{case_id} spills registers: {result}"
        assert result["regs"] <= 255


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
