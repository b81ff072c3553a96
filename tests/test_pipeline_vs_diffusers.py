"""The whole text-to-video chain against diffusers' `WanPipeline`, on the tiny preset in fp32.

diffusers gets exactly what our pipeline uses: the DiT and VAE weights (converted to its names),
the same umT5 model and tokenizer, the official Wan2.1 sigma schedule (see `OfficialGridUniPC`),
the same initial noise and, for the generation, the same text embeddings. Everything after that
is diffusers' own code: CFG, the flow UniPC steps, latent de-normalization, the VAE decode and
the [-1, 1] -> [0, 1] conversion. So any deviation of our loop, solver, noise layout, latent
statistics or decode from an independent implementation shows up here.

What is allowed to differ: diffusers' DiT computes the sinusoidal time embedding in fp32 (the
official code, and ours, in fp64) and its RoPE at lower precision, about 4e-6 relative L2 per
forward on these weights (measured). The measured end-to-end gap is of the same size (1e-6 to
2e-6 on the final latents, 9e-7 for the VAE decode of the same latents, frames 88-93 dB PSNR), so
the solver does not amplify it; the tolerances allow about 10x that and stay >1000x below what
diffusers' own sigma schedule changes (7e-2 on the latents, 32-34 dB: the control test), which is
where the benchmark's ~31 dB against diffusers comes from.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler  # noqa: E402
from diffusers import WanPipeline as DiffusersWanPipeline  # noqa: E402

import wan_engine  # noqa: E402
from wan_engine.bench.suites.dit import diffusers_transformer  # noqa: E402
from wan_engine.bench.suites.vae import diffusers_vae  # noqa: E402
from wan_engine.reference.schedule import dpm_flow_sigmas, flow_sigmas  # noqa: E402

# The official FlowUniPC base grid starts at the training schedule's top sigma, 1 - 1/1000 stored
# in float32 and read back (wan/utils/fm_solvers_unipc.py), and runs linearly down to 0.
OFFICIAL_SIGMA_MAX = float(np.float32(1.0 - 1.0 / 1000))

LATENT_RTOL = 2e-5  # measured 2.1e-6 (tiny defaults, 8 steps), 1.1e-6 (odd case), 6.2e-7 (50 steps)
VIDEO_RTOL = 1e-5  # measured 8.8e-7 (decode of the same latents)
MIN_FRAMES_PSNR_DB = 70.0  # measured 87.8 and 92.7 dB: a few uint8 values one level apart (truncation)


class OfficialGridUniPC(UniPCMultistepScheduler):
    """diffusers' flow UniPC on the official Wan2.1 base grid.

    WanPipeline calls `set_timesteps(num_inference_steps)` itself, so the grid is supplied here;
    diffusers then applies `flow_shift` and derives the int64 timesteps in float64, as the
    official `set_timesteps(N, shift=s)` does.
    """

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if sigmas is None:
            sigmas = np.linspace(OFFICIAL_SIGMA_MAX, 0.0, num_inference_steps + 1)[:-1]
        super().set_timesteps(device=device, sigmas=sigmas, mu=mu)


class OfficialDPMSolver(DPMSolverMultistepScheduler):
    """diffusers' flow DPM-Solver++ (2M, midpoint) on the official DPM++ schedule, which starts at
    sigma 1 (timestep 1000). Its set_timesteps takes no custom sigmas, so they are installed after
    it; the schedule itself is checked against the official formula in test_schedulers.py."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device)
        sigmas, timesteps = dpm_flow_sigmas(num_inference_steps, self.config.flow_shift)
        self.sigmas, self.timesteps = sigmas, timesteps.to(device)


def official_dpm(shift: float) -> OfficialDPMSolver:
    """The official FlowDPMSolverMultistepScheduler configuration."""
    return OfficialDPMSolver(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero",
    )


def flow_unipc(scheduler_cls, shift: float):
    """The official FlowUniPC configuration: order 2, bh2, x0 prediction, lower-order final step."""
    return scheduler_cls(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def reference_pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="reference")


@pytest.fixture(scope="module")
def peer_parts(reference_pipe):
    """diffusers' transformer and VAE holding the reference pipeline's weights."""
    cfg, device = reference_pipe.config, reference_pipe.device
    transformer = diffusers_transformer(cfg.dit, reference_pipe.dit.state_dict(), torch.float32, device)
    vae = diffusers_vae(cfg.vae, reference_pipe.vae.state_dict(), device)
    return transformer, vae


def diffusers_pipeline(pipe, peer_parts, scheduler) -> DiffusersWanPipeline:
    transformer, vae = peer_parts
    peer = DiffusersWanPipeline(tokenizer=pipe.text_encoder.tokenizer.hf, text_encoder=pipe.text_encoder.model,
                                vae=vae, scheduler=scheduler, transformer=transformer)
    peer.set_progress_bar_config(disable=True)
    return peer


def run_diffusers(peer, req, context, context_null, noise) -> tuple[torch.Tensor, np.ndarray]:
    """(final latents [1, 16, f, h, w], uint8 frames [F, H, W, 3]) from diffusers' own loop and decode."""
    final = {}

    def keep_latents(_pipe, _i, _t, tensors):
        final["latents"] = tensors["latents"]
        return {}

    with torch.inference_mode():
        video = peer(prompt_embeds=context, negative_prompt_embeds=context_null, height=req.height,
                     width=req.width, num_frames=req.num_frames, num_inference_steps=req.steps,
                     guidance_scale=req.guidance, latents=noise.clone(), output_type="np",
                     callback_on_step_end=keep_latents).frames[0]
    # The official writer truncates, as frames_to_uint8 does.
    return final["latents"], (np.asarray(video) * 255).astype(np.uint8)


def our_latents_and_video(pipe, req):
    """The pipeline's stages for `req`: (context, context_null, noise, final latents, video [1,3,F,H,W])."""
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        noise = pipe.initial_noise(req)
        latents = pipe.denoise(req, context, context_null)
        video = pipe.decode(latents)
    return context, context_null, noise, latents, video


@pytest.mark.parametrize("steps", [1, 2, 8, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_official_grid_scheduler_has_our_schedule_bitwise(steps, shift):
    scheduler = flow_unipc(OfficialGridUniPC, shift)
    scheduler.set_timesteps(steps)
    sigmas, timesteps = flow_sigmas(steps, shift)
    assert torch.equal(scheduler.sigmas, sigmas)
    assert torch.equal(scheduler.timesteps, timesteps)


def test_text_embeddings_match_diffusers_encode_prompt(reference_pipe, peer_parts):
    """diffusers' prompt cleaning, trimming to the true length and zero padding to 512, over our
    umT5 and tokenizer, gives our context: messy whitespace, HTML entities, curly quotes and
    fullwidth forms (which ftfy rewrites, as in the official cleaner) included."""
    peer = diffusers_pipeline(reference_pipe, peer_parts, flow_unipc(OfficialGridUniPC, 5.0))
    prompt = "  a corgi &amp;amp; a \u201ccat\u201d,\n\t surfing  \uff57\uff41\uff56\uff45\uff53 "
    negative = reference_pipe.config.sample.negative_prompt
    with torch.inference_mode():
        ours = reference_pipe.encode_prompts(prompt, negative)
        theirs = peer.encode_prompt(prompt, negative, do_classifier_free_guidance=True,
                                    max_sequence_length=reference_pipe.config.dit.text_len,
                                    device=reference_pipe.device)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape == (1, 512, reference_pipe.config.dit.text_dim)
        # Same model and ids; only the batch composition (2 prompts vs 1) may reorder fp32 sums.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert b.abs().sum() > 0


CASES = {
    # the tiny preset's own defaults: 64x64, 9 frames, 8 steps, shift 5, guidance 5
    "tiny-defaults": dict(),
    # non-square, 2 latent frames, odd step count, another shift and guidance
    "odd": dict(size=(80, 48), num_frames=5, steps=13, shift=3.0, guidance=7.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generation_matches_diffusers_wan_pipeline(reference_pipe, peer_parts, case):
    req = reference_pipe.make_request("a corgi surfing a wave at sunset", seed=20260, **CASES[case])
    context, context_null, noise, latents, video = our_latents_and_video(reference_pipe, req)
    peer = diffusers_pipeline(reference_pipe, peer_parts, flow_unipc(OfficialGridUniPC, req.shift))
    peer_latents, peer_frames = run_diffusers(peer, req, context, context_null, noise)

    latent_err = rel_l2(latents, peer_latents)
    assert latent_err <= LATENT_RTOL, f"final latents differ from diffusers by {latent_err:.2e} rel-L2"

    # Our decode of our latents against diffusers' decode of the same latents isolates the VAE
    # path (de-normalization, decode, clamp) from the denoising difference above.
    with torch.inference_mode():
        peer_video = diffusers_decode(peer, latents)
    video_err = rel_l2(video, peer_video)
    assert video_err <= VIDEO_RTOL, f"decoded video differs from diffusers by {video_err:.2e} rel-L2"

    # The public path: frames from generate() against diffusers' frames, uint8 for uint8.
    frames = reference_pipe.generate(req.prompt, size=(req.width, req.height), num_frames=req.num_frames,
                                     steps=req.steps, guidance=req.guidance, shift=req.shift, seed=req.seed)
    assert frames.shape == peer_frames.shape == (req.num_frames, req.height, req.width, 3)
    diff = np.abs(frames.astype(np.int16) - peer_frames.astype(np.int16))
    psnr = psnr_uint8(frames, peer_frames)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3 and psnr >= MIN_FRAMES_PSNR_DB, (
        f"frames: max diff {diff.max()}, {(diff > 0).mean():.1e} of values differ, PSNR {psnr:.1f} dB")
    assert frames.std() > 1  # a real picture, not a constant


def diffusers_decode(peer, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' WanPipeline decode step on normalized latents -> video [1, 3, F, H, W] in [-1, 1]."""
    vae = peer.vae
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape)
    std = torch.tensor(vae.config.latents_std).view(shape)
    return vae.decode(latents * std + mean, return_dict=False)[0].clamp(-1, 1)


def test_executor_generation_matches_diffusers_wan_pipeline(reference_pipe, peer_parts):
    """The default engine, fp32 on CPU, against the same diffusers run."""
    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="executor")
    req = pipe.make_request("a red fox in the snow", seed=7, size=(48, 32), num_frames=5, steps=6)
    context, context_null, noise, latents, _ = our_latents_and_video(pipe, req)
    peer = diffusers_pipeline(reference_pipe, peer_parts, flow_unipc(OfficialGridUniPC, req.shift))
    peer_latents, _ = run_diffusers(peer, req, context, context_null, noise)
    latent_err = rel_l2(latents, peer_latents)
    assert latent_err <= LATENT_RTOL, f"executor latents differ from diffusers by {latent_err:.2e} rel-L2"


def test_dpm_solver_generation_matches_diffusers_wan_pipeline(reference_pipe, peer_parts):
    """The official alternative solver through the same chain (measured 1.7e-6 rel-L2)."""
    req = reference_pipe.make_request("a corgi surfing a wave at sunset", seed=11, size=(48, 64), num_frames=5,
                                      steps=9, shift=3.0, solver="dpm++")
    context, context_null, noise, latents, _ = our_latents_and_video(reference_pipe, req)
    peer = diffusers_pipeline(reference_pipe, peer_parts, official_dpm(req.shift))
    peer_latents, _ = run_diffusers(peer, req, context, context_null, noise)
    assert float(peer.scheduler.sigmas[0]) == 1.0 and int(peer.scheduler.timesteps[0]) == 1000
    latent_err = rel_l2(latents, peer_latents)
    assert latent_err <= LATENT_RTOL, f"dpm++ latents differ from diffusers by {latent_err:.2e} rel-L2"


def test_control_diffusers_native_schedule_is_far_off(reference_pipe, peer_parts):
    """The same run on diffusers' own flow grid (linspace(1, 1/1000), sigma 1 nudged by 1e-6) moves
    the latents (7e-2 rel-L2) >1000x beyond the tolerance: the comparison above can see a schedule difference,
    and that difference is what the e2e benchmark's PSNR against diffusers measures."""
    req = reference_pipe.make_request("a corgi surfing a wave at sunset", seed=20260)
    context, context_null, noise, latents, _ = our_latents_and_video(reference_pipe, req)
    peer = diffusers_pipeline(reference_pipe, peer_parts, flow_unipc(UniPCMultistepScheduler, req.shift))
    peer_latents, _ = run_diffusers(peer, req, context, context_null, noise)
    assert not torch.equal(peer.scheduler.sigmas, flow_sigmas(req.steps, req.shift)[0])
    assert rel_l2(latents, peer_latents) > 100 * LATENT_RTOL


@pytest.mark.parametrize("engine", ["reference", "executor"])
def test_two_expert_generation_matches_diffusers_wan22_pipeline(engine):
    """Wan2.2 A14B's two-expert loop against diffusers' (`transformer` at or above
    `boundary_ratio` x 1000 with `guidance_scale`, `transformer_2` below it with `guidance_scale_2`),
    both experts holding our weights; 8 steps put 4 on each side of the boundary."""
    pipe = wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu", engine=engine)
    ref = pipe if engine == "reference" else wan_engine.WanPipeline.from_pretrained("tiny-a14b", device="cpu",
                                                                                   engine="reference")
    req = pipe.make_request("a corgi surfing a wave at sunset", seed=31, size=(48, 32), num_frames=5)
    assert (req.steps, req.guidance, req.low_noise_guidance) == (8, 4.0, 3.0)
    context, context_null, noise, latents, _ = our_latents_and_video(pipe, req)
    cfg = ref.config
    high, low = (diffusers_transformer(cfg.dit, d.state_dict(), torch.float32, ref.device)
                 for d in (ref.dit, ref.low_noise_dit))
    peer = DiffusersWanPipeline(tokenizer=ref.text_encoder.tokenizer.hf, text_encoder=ref.text_encoder.model,
                                vae=diffusers_vae(cfg.vae, ref.vae.state_dict(), ref.device),
                                scheduler=flow_unipc(OfficialGridUniPC, req.shift), transformer=high,
                                transformer_2=low, boundary_ratio=cfg.experts.boundary)
    peer.set_progress_bar_config(disable=True)
    final = {}
    with torch.inference_mode():
        peer(prompt_embeds=context, negative_prompt_embeds=context_null, height=req.height, width=req.width,
             num_frames=req.num_frames, num_inference_steps=req.steps, guidance_scale=req.guidance,
             guidance_scale_2=req.low_noise_guidance, latents=noise.clone(), output_type="latent",
             callback_on_step_end=lambda _p, _i, _t, tensors: final.update(latents=tensors["latents"]) or {})
    latent_err = rel_l2(latents, final["latents"])
    assert latent_err <= LATENT_RTOL, f"two-expert latents differ from diffusers by {latent_err:.2e} rel-L2"
    print(f"{engine}: two-expert latents vs diffusers {latent_err:.2e} rel-L2")


def wan22_peer(pipeline_cls, ref, shift: float):
    """A diffusers Wan2.2 TI2V pipeline (`expand_timesteps=True`) holding `ref`'s weights."""
    cfg = ref.config
    peer = pipeline_cls(tokenizer=ref.text_encoder.tokenizer.hf, text_encoder=ref.text_encoder.model,
                        vae=diffusers_vae(cfg.vae, ref.vae.state_dict(), ref.device),
                        scheduler=flow_unipc(OfficialGridUniPC, shift),
                        transformer=diffusers_transformer(cfg.dit, ref.dit.state_dict(), torch.float32, ref.device),
                        expand_timesteps=True)
    peer.set_progress_bar_config(disable=True)
    return peer


@pytest.mark.parametrize("engine", ["reference", "executor"])
def test_ti2v_text_to_video_matches_diffusers_wan22_pipeline(engine):
    """Wan2.2 TI2V-5B's text-to-video (`tiny-ti2v`: the tiny DiT on the Wan2.2 VAE's 48 channels)
    against diffusers' `WanPipeline(expand_timesteps=True)`, which hands the DiT one timestep per
    token (all equal without an image, as the official `t2v` of textimage2video.py): the same
    function as our per-sample timestep, so the same tolerances hold. The decode compares the
    Wan2.2 VAE paths on the same latents."""
    pipe = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu", engine=engine)
    ref = pipe if engine == "reference" else wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu",
                                                                                   engine="reference")
    req = pipe.make_request("a corgi surfing a wave at sunset", seed=41, size=(96, 64), num_frames=9, steps=6)
    context, context_null, noise, latents, video = our_latents_and_video(pipe, req)
    assert noise.shape == (1, 48, 3, 4, 6)
    peer = wan22_peer(DiffusersWanPipeline, ref, req.shift)
    peer_latents, _ = run_diffusers(peer, req, context, context_null, noise)
    latent_err = rel_l2(latents, peer_latents)
    print(f"{engine}: TI2V text-to-video latents vs diffusers {latent_err:.2e} rel-L2")
    assert latent_err <= LATENT_RTOL, f"TI2V latents differ from diffusers by {latent_err:.2e} rel-L2"
    with torch.inference_mode():
        peer_video = diffusers_decode(peer, latents)
    assert video.shape == peer_video.shape == (1, 3, 9, 64, 96)
    assert rel_l2(video, peer_video) <= VIDEO_RTOL


@pytest.mark.parametrize("engine", ["reference", "executor"])
def test_ti2v_image_to_video_matches_diffusers_wan22_pipeline(engine):
    """TI2V-5B's image-to-video against diffusers' `WanImageToVideoPipeline(expand_timesteps=True)`:
    the first frame's VAE latents stand in for latent frame 0, whose tokens run at timestep 0
    (one timestep per token in diffusers, our two-timestep form here). diffusers steps its solver
    on the unreplaced latents and replaces frame 0 in the model input and at the end; the official
    replaces it after every step: frames 1.. are the same either way (the solver is elementwise),
    and frame 0 ends as the image's latents in both. The image has the output size, so both
    preprocessings (official cover-and-crop, diffusers' resize) leave its pixels as they are."""
    from diffusers import WanImageToVideoPipeline

    pipe = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu", engine=engine)
    ref = pipe if engine == "reference" else wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu",
                                                                                   engine="reference")
    image = (np.random.default_rng(5).random((64, 96, 3)) * 255).astype(np.uint8)
    req = pipe.make_request("a corgi surfing a wave at sunset", seed=43, size=(96, 64), num_frames=9, steps=6,
                            image=image)
    assert (req.width, req.height) == (96, 64)
    with torch.inference_mode():
        context, context_null = pipe.encode_prompts(req.prompt, req.negative_prompt)
        first = pipe.encode_image(req)
        noise = pipe.initial_noise(req)
        latents = pipe.denoise(req, context, context_null, image=first)
    peer = wan22_peer(WanImageToVideoPipeline, ref, req.shift)
    from PIL import Image
    with torch.inference_mode():
        peer_latents = peer(image=Image.fromarray(image), prompt_embeds=context, negative_prompt_embeds=context_null,
                            height=req.height, width=req.width, num_frames=req.num_frames,
                            num_inference_steps=req.steps, guidance_scale=req.guidance, latents=noise.clone(),
                            output_type="latent").frames
    assert torch.equal(latents[:, :, :1], first.latents)
    # The conditioning latents: the same VAE encode of the same pixels (diffusers maps to [-1, 1] as 2x - 1).
    assert rel_l2(latents[:, :, :1], peer_latents[:, :, :1]) <= VIDEO_RTOL
    latent_err = rel_l2(latents[:, :, 1:], peer_latents[:, :, 1:])
    print(f"{engine}: TI2V image-to-video latents vs diffusers {latent_err:.2e} rel-L2")
    assert latent_err <= LATENT_RTOL, f"TI2V i2v latents differ from diffusers by {latent_err:.2e} rel-L2"
    # Without the image the run differs: the test sees the conditioning.
    assert rel_l2(latents[:, :, 1:], pipe.denoise(dataclasses.replace(req, image=None), context,
                                                  context_null)[:, :, 1:]) > 100 * LATENT_RTOL
