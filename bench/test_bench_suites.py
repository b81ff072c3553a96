"""pytest-benchmark cases for the suites' measurements, at the tiny preset on CPU (full shapes need
the CLI on a GPU: `python -m wan_engine.bench --suite dit --model t2v-1.3B`).

    pytest bench/test_bench_suites.py --benchmark-only                  # ~30 s on CPU
    pytest bench/ --benchmark-only --benchmark-json out.json

Each case checks its output against the eager fp32 reference before it scores, so a fast wrong
implementation fails. fp32 tolerances: the executor and the SDPA/math backends compute the same
function in another op order (relative L2 ~1e-7 measured); 1e-5 leaves two orders of margin
while still catching any real numerical change (a bf16 path is ~4e-3).
"""
from __future__ import annotations

import pytest
import torch

from wan_engine.attention import resolve_attention_backend
from wan_engine.bench.accuracy import compare_frames, relative_l2
from wan_engine.bench.roofline import dit_forward_cost
from wan_engine.bench.suites.attention import exact_attention
from wan_engine.bench.suites.common import (
    BenchContext, dit_inputs, executor_factory, random_dit_weights, reference_dit,
)
from wan_engine.bench.suites.step import guided_velocity_fn, step_fn
from wan_engine.bench.suites.vae import random_vae_weights, reference_vae
from wan_engine.configs import get_preset

FP32_REL_L2 = 1e-5
ROUNDS = dict(rounds=5, warmup_rounds=1, iterations=1)


@pytest.fixture(scope="module")
def ctx() -> BenchContext:
    return BenchContext(preset="tiny", model=get_preset("tiny"), width=64, height=64, frames=9,
                        device=torch.device("cpu"), dtype=torch.float32, repeats=1, warmup=0)


@pytest.fixture(scope="module")
def dit_case(ctx):
    cfg = ctx.dit_config
    weights = random_dit_weights(cfg, 0)
    inputs = dit_inputs(ctx, cfg, 2)
    reference = reference_dit(cfg, weights, torch.float32, ctx.device)
    with torch.inference_mode():
        oracle = reference(**inputs)
    return reference, inputs, oracle


def _executor(reference):
    build, why = executor_factory()
    if build is None:
        pytest.skip(why)
    return build(reference, dtype=torch.float32)


@pytest.mark.parametrize("impl", ["reference", "executor"])
def test_dit_forward(benchmark, ctx, dit_case, impl):
    reference, inputs, oracle = dit_case
    if impl == "reference":
        fn = lambda: reference(**inputs)  # noqa: E731
    else:
        executor = _executor(reference)
        text = executor.prepare_text(inputs["context"])
        fn = lambda: executor.predict(inputs["x"], inputs["t"], text)  # noqa: E731
    with torch.inference_mode():
        out = benchmark.pedantic(fn, **ROUNDS)
    assert relative_l2(out, oracle) < FP32_REL_L2
    cost = dit_forward_cost(ctx.dit_config, ctx.width, ctx.height, ctx.frames, 2, dtype_bytes=4)
    benchmark.extra_info.update(flops=cost.flops, bytes=cost.bytes,
                                tflops=cost.flops / benchmark.stats.stats.median / 1e12)


@pytest.mark.parametrize("impl", ["reference", "executor", "executor-2x"])
def test_cfg_step(benchmark, ctx, dit_case, impl):
    reference, inputs, _ = dit_case
    latents, context, context_null = inputs["x"][:1], inputs["context"][:1], inputs["context"][1:]
    guidance = ctx.model.sample.guidance
    with torch.inference_mode():
        _, oracle_v = step_fn(ctx, guided_velocity_fn(reference, context, context_null, guidance), latents)()
        dit = reference if impl == "reference" else _executor(reference)
        cfg_batch = None if impl == "reference" else impl == "executor"
        step = step_fn(ctx, guided_velocity_fn(dit, context, context_null, guidance, cfg_batch), latents)
        next_latents, v = benchmark.pedantic(step, **ROUNDS)
    assert relative_l2(v, oracle_v) < FP32_REL_L2
    assert next_latents.shape == latents.shape and torch.isfinite(next_latents).all()


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_attention(benchmark, backend):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 77, 4, 16, generator=gen) for _ in range(3))
    attn = resolve_attention_backend(backend, "cpu", torch.float32, 16)
    out = benchmark.pedantic(lambda: attn(q, k, v), **ROUNDS)
    assert relative_l2(out, exact_attention(q, k, v)) < FP32_REL_L2
    benchmark.extra_info["flops"] = 4 * 2 * 77 * 77 * 4 * 16


def test_vae_decode(benchmark, ctx):
    cfg = ctx.model.vae
    vae = reference_vae(cfg, random_vae_weights(cfg, 1), torch.float32, ctx.device)
    lf, lh, lw = ctx.latent_grid
    latents = torch.randn(1, cfg.z_dim, lf, lh, lw, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        video = benchmark.pedantic(lambda: vae.decode(latents), **ROUNDS)
        whole = vae.decode(latents, chunked=False)
    # The cached chunked decode equals one pass over the whole clip (same function, other blocking).
    assert video.shape == (1, 3, ctx.frames, ctx.height, ctx.width)
    assert relative_l2(video, whole) < 2e-5


def test_e2e_tiny_pipeline(benchmark, ctx):
    from wan_engine.pipelines.t2v import WanPipeline

    def run(engine):
        pipe = WanPipeline.from_pretrained("tiny", device="cpu", dtype=torch.float32, engine=engine)
        return lambda: pipe.run("a corgi surfing", size=(64, 64), num_frames=9, steps=3, seed=7).frames

    with torch.inference_mode():
        oracle = run("reference")()
        frames = benchmark.pedantic(run("executor"), rounds=3, warmup_rounds=1, iterations=1)
    metrics = compare_frames(frames, oracle)
    # fp32 end to end: the executor's frames differ from the reference's by rounding only, which
    # moves at most a few uint8 levels (measured PSNR ~90 dB); 40 dB is a visible difference.
    assert metrics["psnr"] > 40 and metrics["ssim"] > 0.99
    benchmark.extra_info.update(metrics)
