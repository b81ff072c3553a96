"""`--suite e2e`: prompt -> frames through WanPipeline (text encoding, denoising, VAE decode).

The preset's seeded random weights, a fixed prompt and seed, the preset's sampling defaults
(`--steps` overrides the step count). Each implementation reports one row per stage (from the
pipeline's own per-stage timings, which synchronize the device at stage boundaries) and a total
row carrying the accuracy of its frames against the oracle: the reference pipeline in fp32.

Implementations: reference (engine="reference"), executor (engine="executor", the default
engine), and diffusers' WanPipeline on the same DiT and VAE weights, the same text embeddings
and the same initial noise (its text encoding is not timed: the embeddings are passed in; its
flow UniPC scheduler is given the official Wan2.1 sigma grid, so the row measures the model and
pipeline numerics; diffusers' own grid alone would cost ~30 dB).
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import torch

from wan_engine.device import synchronize

from ..accuracy import compare_frames, compare_tensors
from ..roofline import Cost, dit_forward_cost, vae_decode_cost
from ..timing import summarize
from .common import (
    BenchContext, SuiteResult, crash_row, dtype_name, exact_fp32, make_row, release_memory, single_cost,
    text_encoder_cost,
)

SUITE = "e2e"
PROMPT = "a corgi surfing a wave at sunset, cinematic lighting"
STAGES = ("text_encoding", "image_encoding", "denoising", "vae_decode")  # image_encoding: i2v/flf2v


def stage_costs(ctx: BenchContext, steps: int, dtype_bytes: int) -> dict[str, Cost]:
    """Work per stage: both prompts' encoding, steps x (cond + uncond) forwards, the decode."""
    text = text_encoder_cost(ctx.model.t5, 2, dtype_bytes)
    forward = dit_forward_cost(ctx.dit_config, ctx.width, ctx.height, ctx.frames, 2, dtype_bytes=dtype_bytes)
    decode = vae_decode_cost(ctx.model.vae, ctx.width, ctx.height, ctx.frames, 1)
    denoise = single_cost("denoising", steps * forward.flops, steps * forward.bytes)
    parts = (text, denoise, decode)
    total = single_cost("total", sum(p.flops for p in parts), sum(p.bytes for p in parts))
    # diffusers' run is given the embeddings: its total has no text encoding.
    without_text = single_cost("total", denoise.flops + decode.flops, denoise.bytes + decode.bytes)
    return {"text_encoding": text, "denoising": denoise, "vae_decode": decode, "total": total,
            "total_without_text": without_text}


def condition_images(ctx: BenchContext) -> dict:
    """i2v/flf2v: a smooth synthetic first (and last) frame of the requested size, so that the
    video has that size (the official rule keeps the image's aspect ratio); {} for t2v."""
    model_type = ctx.dit_config.model_type
    if model_type == "t2v":
        return {}
    y, x = np.mgrid[0:ctx.height, 0:ctx.width] / max(ctx.width, ctx.height)

    def frame(phase: float) -> np.ndarray:
        return (np.stack([np.sin(5 * x + 2 * c + phase) * np.cos(4 * y) for c in range(3)], -1) * 110 + 128
                ).astype(np.uint8)
    return dict(image=frame(0.0), last_image=frame(1.5) if model_type == "flf2v" else None)


def timed_runs(ctx: BenchContext, generate, repeats: int, warmup: int):
    """Stage and total durations over `repeats` runs of `generate() -> GenerationResult`, and the last."""
    stages: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    result = None
    for i in range(warmup + repeats):
        synchronize(ctx.device)
        start = time.perf_counter()
        result = generate()
        synchronize(ctx.device)
        if i >= warmup:
            stages["total"].append(time.perf_counter() - start)
            for name in STAGES:
                if name in result.timings:
                    stages[name].append(result.timings[name])
    return {k: summarize(v, warmup, "perf_counter+sync") for k, v in stages.items() if v}, result


def diffusers_generate(pipe, ctx: BenchContext, steps: int):
    """diffusers' WanPipeline over `pipe`'s DiT and VAE weights -> () -> uint8 frames [F, H, W, 3]; a
    two-expert model's low-noise DiT as its `transformer_2`, with `boundary_ratio` and `guidance_scale_2`."""
    from diffusers import UniPCMultistepScheduler
    from diffusers import WanPipeline as DiffusersWanPipeline

    from wan_engine.reference.schedule import unipc_base_grid

    from .dit import diffusers_transformer
    from .vae import diffusers_vae

    cfg = pipe.config
    req = pipe.make_request(PROMPT, size=(ctx.width, ctx.height), num_frames=ctx.frames, steps=steps,
                            seed=ctx.seed)
    transformer = diffusers_transformer(cfg.dit, pipe.dit.state_dict(), pipe.dtype, pipe.device)
    experts = {}
    if pipe.low_noise_dit is not None:
        experts = dict(transformer_2=diffusers_transformer(cfg.dit, pipe.low_noise_dit.state_dict(), pipe.dtype,
                                                           pipe.device), boundary_ratio=cfg.experts.boundary)
    vae = diffusers_vae(cfg.vae, pipe.vae.state_dict(), pipe.device)
    class OfficialGridUniPC(UniPCMultistepScheduler):
        # WanPipeline calls set_timesteps(N) itself; supply the official base grid (diffusers shifts it).
        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
            if sigmas is None:
                sigmas = unipc_base_grid(num_inference_steps)
            super().set_timesteps(device=device, sigmas=sigmas, mu=mu)

    scheduler = OfficialGridUniPC(prediction_type="flow_prediction", use_flow_sigmas=True,
                                  num_train_timesteps=1000, flow_shift=req.shift)
    peer = DiffusersWanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                transformer=transformer, **experts)
    guidance_2 = {} if pipe.low_noise_dit is None else dict(guidance_scale_2=req.low_noise_guidance)
    peer.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        noise = pipe.initial_noise(req)

    def generate():
        video = peer(prompt_embeds=context, negative_prompt_embeds=context_null, height=req.height,
                     width=req.width, num_frames=req.num_frames, num_inference_steps=steps,
                     guidance_scale=req.guidance, latents=noise, output_type="np", **guidance_2).frames[0]
        return (np.asarray(video) * 255).astype(np.uint8)  # truncation, as frames_to_uint8 does

    return generate


def run(ctx: BenchContext) -> SuiteResult:
    from wan_engine.pipelines.t2v import WanPipeline

    result = SuiteResult()
    steps = ctx.steps or ctx.model.sample.steps
    shape = f"{ctx.size_label} {steps} steps"

    if ctx.layers is not None:
        result.notes.append("e2e: --layers ignored, the pipeline runs the preset's full depth")

    def load(engine: str, dtype: torch.dtype):
        return WanPipeline.from_pretrained(ctx.preset, device=ctx.device, dtype=dtype, seed=ctx.seed, engine=engine)

    images = condition_images(ctx)

    def generate_with(pipe):
        return lambda: pipe.run(PROMPT, size=(ctx.width, ctx.height), num_frames=ctx.frames, steps=steps,
                                seed=ctx.seed, **images)

    def add_rows(impl, dtype, stats, frames=None, oracle_frames=None, note="", attention=None):
        costs = stage_costs(ctx, steps, torch.empty((), dtype=dtype).element_size())
        if impl == "diffusers":
            costs["total"] = costs["total_without_text"]
        for stage, st in stats.items():
            accuracy, oracle = None, ""
            if stage == "total" and oracle_frames is not None:
                accuracy = compare_tensors(frames.astype(np.float64), oracle_frames.astype(np.float64))
                accuracy |= compare_frames(frames, oracle_frames)
                oracle = "reference fp32 pipeline frames (uint8)"
            result.rows.append(make_row(ctx, SUITE, stage.replace("_", " "), impl, st, shape=shape,
                                        dtype=dtype_name(dtype), cost=costs.get(stage), accuracy=accuracy,
                                        oracle=oracle or ("(is the oracle)" if impl == "reference" and
                                                          dtype == torch.float32 and stage == "total" else ""),
                                        note=note if stage == "total" else "", attention=attention))

    with torch.inference_mode():
        oracle_pipe = load("reference", torch.float32)
        oracle_is_engine = ctx.dtype == torch.float32
        repeats, warmup = (ctx.repeats, ctx.warmup) if oracle_is_engine else (1, 0)
        with exact_fp32(ctx.device):
            stats, last = timed_runs(ctx, generate_with(oracle_pipe), repeats, warmup)
        oracle_frames = last.frames
        add_rows("reference", torch.float32, stats, attention=oracle_pipe.attention_backend)

    if images:
        result.notes.append("e2e diffusers: text-to-video only (its WanPipeline); the I2V/FLF2V chain is checked "
                            "against WanImageToVideoPipeline in tests/test_i2v.py")
    elif importlib.util.find_spec("diffusers") is None:
        result.notes.append("e2e diffusers: skipped (diffusers is not installed)")
    else:
        try:
            stats, frames = _time_frames(ctx, diffusers_generate(oracle_pipe, ctx, steps))
            add_rows("diffusers", torch.float32, {"total": stats}, frames, oracle_frames,
                     note="WanPipeline, text embeddings given (not timed)", attention="diffusers (torch sdpa)")
        except Exception as err:  # noqa: BLE001 - installed but broken: a failed row
            result.rows.append(crash_row(ctx, SUITE, "total", "diffusers", err, shape=shape, dtype="fp32"))
    del oracle_pipe
    release_memory(ctx.device)

    variants = [("executor", ctx.dtype)]
    if not oracle_is_engine:
        variants.insert(0, ("reference", ctx.dtype))
    for engine, dtype in variants:
        try:
            with torch.inference_mode():
                pipe = load(engine, dtype)
                stats, last = timed_runs(ctx, generate_with(pipe), ctx.repeats, ctx.warmup)
            add_rows(engine, dtype, stats, last.frames, oracle_frames, attention=pipe.attention_backend)
            del pipe
        except Exception as err:  # noqa: BLE001 - a crash is a failed row
            result.rows.append(crash_row(ctx, SUITE, "total", engine, err, shape=shape, dtype=dtype_name(dtype)))
        release_memory(ctx.device)
    return result


def _time_frames(ctx: BenchContext, generate):
    samples, frames = [], None
    for i in range(ctx.warmup + ctx.repeats):
        synchronize(ctx.device)
        start = time.perf_counter()
        frames = generate()
        synchronize(ctx.device)
        if i >= ctx.warmup:
            samples.append(time.perf_counter() - start)
    return summarize(samples, ctx.warmup, "perf_counter+sync"), frames
