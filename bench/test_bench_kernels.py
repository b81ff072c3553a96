"""pytest-benchmark cases for the fused kernels: each op with the Triton kernel, the eager torch ops
it replaces and (GPU only) torch.compile of them.

    pytest bench/test_bench_kernels.py --benchmark-only       # tiny shapes on CPU, ~20 s
    pytest bench/test_bench_kernels.py --benchmark-only --benchmark-json out.json   # GPU: 480p shapes

Each case records the compulsory bytes and the achieved GB/s in `extra_info`. The Triton output is
checked against the eager output first, so a fast wrong kernel fails instead of scoring.
"""
import pytest
import torch

from wan_engine.env import use_triton_interpreter_without_gpu

ON_GPU = torch.cuda.is_available()
# Triton runs kernels on CPU only through its interpreter, which must be chosen before the first
# kernel module is imported (tests/conftest.py makes the same call for tests/).
use_triton_interpreter_without_gpu()

from wan_engine.bench.kernels import OPS, SHAPE_PRESETS, bytes_moved, op_cases  # noqa: E402

SHAPES = SHAPE_PRESETS["full" if ON_GPU else "tiny"]
DTYPE = torch.bfloat16
# Same-dtype rounding differences only: bf16 outputs differ from the eager ones by about one ulp
# (Triton's interpreter truncates), relative to values of a few units.
BF16_MATCH = dict(atol=0.07, rtol=0.02)
PROVIDERS = [
    "triton",
    "torch",
    pytest.param(
        "torch.compile",
        marks=pytest.mark.skipif(not ON_GPU, reason="inductor's CPU C++ build is slow and off the engine's path"),
    ),
]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"B{s.batch}-S{s.seq}-D{s.dim}-H{s.num_heads}")
def cases(request):
    return request.param, op_cases(request.param, DTYPE, "cuda" if ON_GPU else "cpu")


def _as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _synchronized(fn):
    if not ON_GPU:
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", OPS)
def test_bench(benchmark, cases, op, provider):
    shape, all_cases = cases
    case = all_cases[op]
    eager = case.reference(*case.args, **case.kwargs)
    if provider == "torch.compile":
        fn = torch.compile(case.reference, dynamic=False)
    else:
        fn = {"triton": case.kernel, "torch": case.reference}[provider]
    out = fn(*case.args, **case.kwargs)
    for got, want in zip(_as_tuple(out), _as_tuple(eager)):
        torch.testing.assert_close(got.float(), want.float(), **BF16_MATCH)

    benchmark.group = f"{op} B{shape.batch} S{shape.seq} D{shape.dim}"
    benchmark.pedantic(_synchronized(fn), args=case.args, kwargs=case.kwargs,
                       rounds=30 if ON_GPU else 3, warmup_rounds=5 if ON_GPU else 1)  # fmt: skip
    nbytes = bytes_moved(case, eager)
    benchmark.extra_info.update(provider=provider, bytes=nbytes, dtype=str(DTYPE).removeprefix("torch."))
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
