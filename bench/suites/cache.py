"""`--suite cache`: the speed/quality curve of the step-cache policies.

On `--model shapes` or `shapes-a14b` (the trained models and their shipped calibrations; the
second is two Wan2.2-style experts, where TeaCache is refused and MagCache follows the two-expert
rule, so its sweep holds MagCache and FBCache only): all 24 held-out and 24 seen prompts, one
seed each, uncached and under each policy at several thresholds. Per setting: the DiT forwards computed (per branch) and the reduction, the CPU/GPU wall-time ratio per clip
measured in this run beside the uncached runs, PSNR/SSIM of the frames against the uncached
frames, and the prompt-adherence score (`bench.adherence`) with its change from uncached.
Verdict rows at each policy's defaults: forwards down >= 1.8x and every adherence score within
5 points of uncached.

On any other preset (random weights: the frames are noise, only the timings mean something):
each policy at its defaults, full size, with the published calibration of the preset's name (an
i2v/flf2v preset gets the e2e suite's synthetic first and last frames).
"""
from __future__ import annotations

import time

import numpy as np

from ..accuracy import compare_frames
from ..adherence import accuracy, read_clip, score
from ..timing import summarize
from .common import BenchContext, SuiteResult, crash_row, dtype_name, make_row
from .e2e import condition_images

SUITE = "cache"
SETTINGS = ("teacache:0.1", "teacache:0.2,ret_steps", "magcache:0.06", "magcache:0.24", "fbcache:0.1", "fbcache:0.3")
# Two experts: MagCache4Wan2.2's published T2V-A14B setting (0.06, retention 0.4) beside the sweep.
EXPERT_SETTINGS = ("magcache:0.06", "magcache:0.06,retention=0.4", "magcache:0.24", "fbcache:0.1", "fbcache:0.3")
EXPERT_DEFAULTS = ("magcache", "fbcache")
# x 2 sets x 1 seed = 48 clips per setting (~10 min for the sweep on 2 CPU cores). With 24 clips one
# flipped clip moves a score by 4.2 points, so the 5-point bound would judge a single clip.
PROMPTS_PER_SET = 24
DEFAULTS = ("teacache", "magcache", "fbcache")  # the specs with no threshold: each policy's default
MIN_FORWARD_REDUCTION = 1.8
MAX_ADHERENCE_DROP = 0.05
SEED = 0


def _prompts():
    from .adherence import prompt_sets

    sets = prompt_sets()
    return [(name, combo) for name in ("held-out", "seen") for combo in sets[name][:PROMPTS_PER_SET]]


def _run_all(pipe, ctx: BenchContext, prompts, cache):
    frames, seconds, reports = [], [], []
    for _, combo in prompts:
        start = time.perf_counter()
        result = pipe.run(combo.caption, size=(ctx.width, ctx.height), num_frames=ctx.frames, steps=ctx.steps,
                          seed=SEED, cache=cache)
        seconds.append(time.perf_counter() - start)
        frames.append(result.frames)
        reports.append(result.cache)
    return frames, seconds, reports


def _adherence(frames, prompts) -> dict[str, float]:
    return accuracy([score(read_clip(f), combo) for f, (_, combo) in zip(frames, prompts)])


def run(ctx: BenchContext) -> SuiteResult:
    from wan_engine.cache import CacheConfig
    from wan_engine.configs import SHAPES_PRESETS
    from wan_engine.pipelines.t2v import WanPipeline

    result = SuiteResult()
    pipe = WanPipeline.from_pretrained(ctx.preset, device=ctx.device, dtype=ctx.dtype)
    if ctx.preset not in SHAPES_PRESETS:
        return _timings_only(ctx, pipe, result)
    model = ctx.preset
    two_experts = pipe.config.experts is not None
    settings, defaults = (EXPERT_SETTINGS, EXPERT_DEFAULTS) if two_experts else (SETTINGS, DEFAULTS)
    if two_experts:
        result.notes.append(f"cache: {model} has two experts: TeaCache is refused (its polynomial belongs to one "
                            f"DiT), MagCache applies retention per expert and computes each expert's first step")
    prompts = _prompts()
    shape = f"{ctx.size_label}, {ctx.steps or pipe.config.sample.steps} steps, {len(prompts)} prompts"
    base_frames, base_seconds, _ = _run_all(pipe, ctx, prompts, None)
    base_score = _adherence(base_frames, prompts)
    base_time = summarize(base_seconds)
    result.rows.append(make_row(ctx, SUITE, "uncached", model, base_time, shape=shape, dtype=dtype_name(ctx.dtype),
                                note=_score_note(base_score), **_score_fields(base_score)))
    for spec in (*settings, *defaults):
        cache = CacheConfig.parse(spec)
        label = cache.describe()
        try:
            frames, seconds, reports = _run_all(pipe, ctx, prompts, cache)
        except Exception as err:  # noqa: BLE001 - a crashed setting is a FAIL row, the sweep goes on
            result.rows.append(crash_row(ctx, SUITE, label, model, err, shape=shape))
            continue
        steps = reports[0].steps
        label = f"{reports[0].policy} (default)" if spec in defaults else label  # the threshold it resolved to
        computed = np.mean([sum(r.counts()) / 2 for r in reports])
        reduction = steps / computed
        adherence = _adherence(frames, prompts)
        drops = {k: base_score[k] - adherence[k] for k in base_score}
        timing = summarize(seconds)
        quality = compare_frames(np.concatenate(frames), np.concatenate(base_frames))
        note = (f"forwards {computed:.1f}/{steps} per branch ({reduction:.2f}x fewer), wall {base_time.median_s / timing.median_s:.2f}x "
                f"vs uncached (medians per clip, this run); schedule {reports[0].schedule_text()}; {_score_note(adherence)}; "
                f"change vs uncached " + ", ".join(f"{k} {-100 * d:+.1f}" for k, d in drops.items()))
        verdict = None
        if spec in defaults:
            ok = reduction >= MIN_FORWARD_REDUCTION and max(drops.values()) <= MAX_ADHERENCE_DROP + 1e-9
            verdict = "pass" if ok else "FAIL"
            note += (f"; defaults target: >= {MIN_FORWARD_REDUCTION}x fewer forwards and adherence within "
                     f"{100 * MAX_ADHERENCE_DROP:.0f} points")
        result.rows.append(make_row(ctx, SUITE, label, model, timing, shape=shape, dtype=dtype_name(ctx.dtype),
                                    accuracy=quality, oracle="uncached frames", note=note, verdict=verdict,
                                    forward_reduction=reduction, wall_ratio=base_time.median_s / timing.median_s,
                                    **_score_fields(adherence)))
    return result


def _timings_only(ctx: BenchContext, pipe, result: SuiteResult) -> SuiteResult:
    from wan_engine.cache import CacheConfig

    shape = f"{ctx.size_label}, {ctx.steps or pipe.config.sample.steps} steps"
    prompt = "a corgi surfing a wave at sunset, cinematic lighting"
    images = condition_images(ctx)  # {} for text-to-video

    def timed(cache):
        start = time.perf_counter()
        out = pipe.run(prompt, size=(ctx.width, ctx.height), num_frames=ctx.frames, steps=ctx.steps, seed=SEED,
                       cache=cache, **images)
        return out, time.perf_counter() - start

    for _ in range(ctx.warmup):  # untimed: the first run pays one-time setup, which would flatter every cache
        timed(None)
    base, base_s = timed(None)
    result.rows.append(make_row(ctx, SUITE, "uncached", ctx.preset, summarize([base_s]), shape=shape,
                                dtype=dtype_name(ctx.dtype), note="random weights: timings only"))
    for policy in DEFAULTS:
        cache = CacheConfig.parse(policy)
        try:
            out, seconds = timed(cache)
        except ValueError as err:  # no published calibration for this preset
            result.notes.append(f"cache {policy}: {err}")
            continue
        result.rows.append(make_row(ctx, SUITE, cache.describe(), ctx.preset, summarize([seconds]), shape=shape,
                                    dtype=dtype_name(ctx.dtype), accuracy=compare_frames(out.frames, base.frames),
                                    oracle="uncached frames (noise: random weights)",
                                    note=f"{out.cache.summary()}, wall {base_s / seconds:.2f}x vs uncached",
                                    wall_ratio=base_s / seconds))
    return result


def _score_fields(score_: dict[str, float]) -> dict:
    return {f"adherence_{k}": v for k, v in score_.items()}


def _score_note(score_: dict[str, float]) -> str:
    return "adherence " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in score_.items())
