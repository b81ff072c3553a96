"""`--suite vae`: VAE decode (latents -> video) and encode (video -> latents).

Seeded random VAE weights, random normalized latents and a random video in [-1, 1]. The oracle
is the reference in fp32 with the official chunked schedule (decode one latent frame at a time,
encode frame 0 then chunks of 4). Decoded videos are compared as tensors and, after the
pipeline's uint8 conversion, by PSNR and SSIM; encodes by the posterior mean.

Implementations: reference (fp32, chunked: the oracle), reference-whole-clip (one pass over all
frames, no feature cache), reference-bf16 (weights and activations in bf16), diffusers
(AutoencoderKLWan on the converted weights, when installed).

Verdicts (bench/bounds.py): decodes by a PSNR floor derived from the row's dtype
(`vae_frames_bound`), encodes by a relative-L2 bound (`vae_tensor_bound`); diffusers is a peer
(measured, not judged). A build or a call that raises is a FAIL row.
"""
from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import torch

from wan_engine.pipelines.t2v import frames_to_uint8

from ..accuracy import compare_frames, compare_tensors
from ..bounds import vae_frames_bound, vae_tensor_bound
from ..roofline import vae_decode_cost, vae_encode_cost
from ..timing import measure
from .common import (
    BenchContext, SuiteResult, crash_row, dtype_name, exact_fp32, generator, make_row, release_memory,
)

SUITE = "vae"
WHOLE_CLIP_LIMIT_BYTES = 8 << 30


def reference_vae(cfg, state_dict: dict, dtype: torch.dtype, device: torch.device):
    from wan_engine.loading.checkpoint import load_into
    from wan_engine.reference.vae import WanVAE

    with torch.device("meta"):
        model = WanVAE(cfg)
    return load_into(model, state_dict, dtype=dtype, device=device, source="random weights").eval()


def random_vae_weights(cfg, seed: int) -> dict:
    from wan_engine.loading.random_init import random_state_dict
    from wan_engine.reference.vae import WanVAE

    with torch.device("meta"):
        shape_model = WanVAE(cfg)
    return random_state_dict(shape_model, seed)


def diffusers_vae(cfg, state_dict: dict, device: torch.device):
    from diffusers import AutoencoderKLWan

    from wan_engine.loading.vae_format import official_to_diffusers_vae

    # Wan2.2's VAE: the residual stages, the 2x2 patch (12 pixel channels) and its wider decoder.
    wan22 = dict(is_residual=True, decoder_base_dim=cfg.decoder_dim, patch_size=cfg.patch_size,
                 in_channels=3 * cfg.patch_size ** 2, out_channels=3 * cfg.patch_size ** 2,
                 scale_factor_spatial=cfg.spatial_stride) if cfg.residual else {}
    model = AutoencoderKLWan(base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                             num_res_blocks=cfg.num_res_blocks, attn_scales=list(cfg.attn_scales),
                             temperal_downsample=list(cfg.temporal_downsample),
                             latents_mean=list(cfg.latent_mean), latents_std=list(cfg.latent_std), **wan22)
    model.load_state_dict(official_to_diffusers_vae(state_dict), strict=True)
    return model.to(device).eval().requires_grad_(False)


def _frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3], the pipeline's conversion."""
    return frames_to_uint8(video[0])


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    cfg = ctx.model.vae
    weights = random_vae_weights(cfg, ctx.seed + 1)
    gen = generator(ctx, 300)
    lf, lh, lw = ctx.latent_grid
    latents = torch.randn(1, cfg.z_dim, lf, lh, lw, generator=gen, device=ctx.device)
    video = torch.rand(1, 3, ctx.frames, ctx.height, ctx.width, generator=gen, device=ctx.device) * 2 - 1
    # diffusers decodes unnormalized latents (its pipeline undoes the normalization first).
    stats_shape = (1, cfg.z_dim, 1, 1, 1)
    raw_latents = (latents * torch.tensor(cfg.latent_std, device=ctx.device).view(stats_shape)
                   + torch.tensor(cfg.latent_mean, device=ctx.device).view(stats_shape))
    shape = f"{ctx.size_label} latent {lf}x{lh}x{lw}"
    fp32, bf16 = torch.float32, torch.bfloat16

    def reference(dtype):
        return lambda: reference_vae(cfg, weights, dtype, ctx.device)

    # (impl, dtype, build model, decode(model), encode(model) or None, note); the first is the oracle.
    impls = [
        ("reference", fp32, reference(fp32), lambda m: m.decode(latents), lambda m: m.encode_mean(video), ""),
        ("reference-bf16", bf16, reference(bf16), lambda m: m.decode(latents.to(bf16)),
         lambda m: m.encode_mean(video.to(bf16)), ""),
    ]
    # Without the feature cache every activation holds all frames at once.
    whole_clip_bytes = 4 * 4 * cfg.base_dim * ctx.frames * ctx.height * ctx.width
    if whole_clip_bytes <= WHOLE_CLIP_LIMIT_BYTES:
        impls.insert(1, ("reference-whole-clip", fp32, reference(fp32), lambda m: m.decode(latents, chunked=False),
                         None, "no feature cache: one pass over all frames"))
    else:
        result.notes.append(f"vae reference-whole-clip: skipped (would hold ~{whole_clip_bytes / 2**30:.0f} GiB "
                            f"of activations at once)")
    if importlib.util.find_spec("diffusers") is None:
        result.notes.append("vae diffusers: skipped (diffusers is not installed)")
    else:
        impls.append(("diffusers", fp32, lambda: diffusers_vae(cfg, weights, ctx.device),
                      lambda m: m.decode(raw_latents, return_dict=False)[0],
                      lambda m: m.encode(video).latent_dist.mean, "AutoencoderKLWan"))

    oracle: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for impl, dtype, build, decode, encode, note in impls:
            try:
                model = build()
            except Exception as err:  # noqa: BLE001 - a crash is a failed row
                for case, call in (("vae decode", decode), ("vae encode", encode)):
                    if call is not None:
                        result.rows.append(crash_row(ctx, SUITE, case, impl, err, shape=shape, dtype=dtype_name(dtype)))
                continue
            size = torch.empty((), dtype=dtype).element_size()
            for case, call, cost in (
                ("vae decode", decode, vae_decode_cost(cfg, ctx.width, ctx.height, ctx.frames, 1, size)),
                ("vae encode", encode, vae_encode_cost(cfg, ctx.width, ctx.height, ctx.frames, 1, size)),
            ):
                if call is None:
                    continue
                try:
                    with exact_fp32(ctx.device) if dtype == fp32 else contextlib.nullcontext():
                        stats, out = measure(lambda: call(model), ctx.device, ctx.repeats, ctx.warmup)
                except Exception as err:  # noqa: BLE001 - a crash is a failed row
                    result.rows.append(crash_row(ctx, SUITE, case, impl, err, shape=shape, dtype=dtype_name(dtype)))
                    continue
                row_note = note if case == "vae decode" else f"posterior mean{'; ' + note if note else ''}"
                if impl == impls[0][0]:
                    oracle[case] = out.float()
                    result.rows.append(make_row(ctx, SUITE, case, impl, stats, shape=shape, dtype=dtype_name(dtype),
                                                cost=cost, oracle="(is the oracle)", note=row_note))
                    continue
                if case not in oracle:  # the oracle crashed (its FAIL row says why): nothing to judge by
                    result.rows.append(make_row(ctx, SUITE, case, impl, stats, shape=shape, dtype=dtype_name(dtype),
                                                cost=cost, note=f"{row_note}; not compared: the oracle crashed"))
                    continue
                accuracy = compare_tensors(out.float(), oracle[case])
                if case == "vae decode":
                    accuracy |= _frame_metrics(_frames(out), _frames(oracle[case]), result)
                bound = None
                if impl != "diffusers":  # a peer with its own numerics: measured, not judged
                    bound = vae_frames_bound(dtype) if "psnr" in accuracy else vae_tensor_bound(dtype)
                result.rows.append(make_row(ctx, SUITE, case, impl, stats, shape=shape, dtype=dtype_name(dtype),
                                            cost=cost, accuracy=accuracy, oracle="reference fp32 (chunked)",
                                            note=row_note, bound=bound))
            model = None  # free this implementation's weights before building the next
            release_memory(ctx.device)
    _decode_paths(ctx, cfg, weights, latents, shape, oracle.get("vae decode"), result)
    return result


LEVER_LATENT_FRAMES = 6


def _decode_paths(ctx: BenchContext, cfg, weights: dict, latents, shape: str, oracle, result: SuiteResult) -> None:
    """The pipeline's decode paths, each timed with its peak memory: the static chunk loop (eager),
    the same with its steady chunk replayed as a CUDA graph (GPU only), with each speed lever alone,
    and the tiled decode (2x2 tiles, overlap 4); at the check's 480p size also the static, graphed
    and tiled decodes at 720p. One
    warm-up (the graph's capture), one timed call each: a full-size decode takes seconds."""
    from wan_engine.graphs import GraphReplayer
    from wan_engine.vae.decode import VAEDecodeOptions, VAEDecoder
    from wan_engine.vae.tiling import TilePlan

    model = reference_vae(cfg, weights, torch.float32, ctx.device)
    _, _, lf, lh, lw = latents.shape
    half = TilePlan((lh // 2 + 4, lw // 2 + 4), overlap=4) if min(lh, lw) > 10 else TilePlan((lh // 2 + 2, lw // 2 + 2), 2)
    cases = [("static", latents, None, TilePlan(), shape), ("static-graphs", latents, "graphs", TilePlan(), shape),
             ("tiled-2x2", latents, None, half, shape)]
    # The speed levers (wan_engine/vae/fast.py), one at a time against the static loop on the same
    # latents: whether each pays. At most 6 latent frames (21 frames) keeps them inside the check's budget.
    levers = {"static-fused-norm-silu": dict(fused_norm_silu=True), "static-channels-last": dict(channels_last=True),
              "static-cudnn-benchmark": dict(cudnn_benchmark=True)}
    short, short_shape = latents, shape
    if lf > LEVER_LATENT_FRAMES:
        short = latents[:, :, :LEVER_LATENT_FRAMES]
        short_shape = f"{ctx.width}x{ctx.height}x{4 * LEVER_LATENT_FRAMES - 3} latent {LEVER_LATENT_FRAMES}x{lh}x{lw}"
        cases.append(("static-21f", short, None, TilePlan(), short_shape))
    cases += [(name, short, None, TilePlan(), short_shape) for name in levers]
    if (ctx.width, ctx.height) == (832, 480):
        big = torch.randn(1, cfg.z_dim, lf, 90, 160, generator=generator(ctx, 301), device=ctx.device)
        shape_720 = f"1280x720x{ctx.frames} latent {lf}x90x160"
        cases += [("static-720p", big, None, TilePlan(), shape_720),
                  ("static-graphs-720p", big, "graphs", TilePlan(), shape_720),
                  ("tiled-2x2-720p", big, None, TilePlan((49, 84), overlap=4), shape_720)]
    with torch.inference_mode(), exact_fp32(ctx.device):
        for impl, z, graphs, plan, row_shape in cases:
            if graphs and ctx.device.type != "cuda":
                result.notes.append(f"vae {impl}: skipped (CUDA graphs need a GPU)")
                continue
            decoder = VAEDecoder(model, VAEDecodeOptions(tiling=plan, **levers.get(impl, {})))
            replayer = GraphReplayer(ctx.device) if graphs else None
            try:
                peak, (stats, out) = _peak_mib(ctx.device, lambda: measure(lambda: decoder(z, replayer), ctx.device,
                                                                            1, 1))
            except Exception as err:  # noqa: BLE001 - a crash is a failed row
                result.rows.append(crash_row(ctx, SUITE, "vae decode path", impl, err, shape=row_shape, dtype="fp32"))
                continue
            note = f"{plan.tiles(z.shape[3], z.shape[4])} tile(s)" + (
                f"; graphs {'replayed' if replayer.active else 'off: ' + str(replayer.disabled_reason)}" if graphs else "")
            accuracy, bound = {}, None
            if oracle is not None and z.shape[3:] == latents.shape[3:]:
                # The decode is causal: the first chunks' frames are the whole decode's first frames.
                reference = oracle[:, :, :out.shape[2]]
                accuracy = compare_tensors(out.float(), reference) | _frame_metrics(_frames(out), _frames(reference),
                                                                                    result)
                bound = vae_frames_bound(torch.float32) if plan.tile is None else None  # tiling is lossy: measured
            result.rows.append(make_row(ctx, SUITE, "vae decode path", impl, stats, shape=row_shape, dtype="fp32",
                                        accuracy=accuracy, oracle="reference fp32 (chunked)" if accuracy else "",
                                        note=note, bound=bound, peak_mem_mib=peak))
            out = None
            release_memory(ctx.device)


def _peak_mib(device: torch.device, fn):
    """(peak MiB the call added on a GPU, or None on the CPU, fn's value)."""
    if device.type != "cuda":
        return None, fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    value = fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20, value


def _frame_metrics(frames, oracle_frames, result: SuiteResult) -> dict:
    try:
        return compare_frames(frames, oracle_frames)
    except ValueError as err:  # frames smaller than the SSIM window
        result.notes.append(f"vae: PSNR/SSIM skipped ({err})")
        return {}
