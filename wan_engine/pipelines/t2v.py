"""Text-to-video: prompt -> text embeddings -> denoising loop with CFG -> VAE decode -> uint8 frames.

Image-to-video (i2v) and first-last-frame-to-video (flf2v) models run the same loop with the
image conditioning of `image_condition` (CLIP features and the masked, VAE-encoded frames) added
to both CFG branches; `generate(prompt, image=..., last_image=...)`. A Wan2.2 TI2V model takes
text alone, or text and a first frame, whose latents stand in for latent frame 0 at timestep 0
(`first_frame`, `runner.FirstFrame`).

A two-expert model (Wan2.2 A14B) denoises with its high-noise DiT on the steps at or above the
boundary and its low-noise DiT on the rest, each with its own guidance, on one solver (as the
official `WanT2V.generate` of Wan2.2).

Under a multi-process launch every rank runs the same `run` call: rank 0 draws the seed (when
none is given) and the initial noise and broadcasts both, the DiT runs with sequence and/or CFG
parallelism, every rank steps the solver on the same guided velocity, and the VAE decode is split
over the rows of the video across the ranks (`parallel_vae_decode`; an i2v/flf2v conditioning
encode likewise, `parallel_vae_encode`); only rank 0 receives the decoded frames. Other ranks get a
result with `frames=None`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import validation
from ..configs import ModelConfig
from ..cache import (
    CacheConfig, CacheReport, Calibration, StepCache, build_step_cache, cache_report, check_cache_for_experts,
    check_cache_runs_on, resolve_calibration,
)
from ..device import synchronize
from ..export.manifest import ShapeRange
from ..export.runners import ExportedDiT, ExportedVAEDecoder, ExportedVAEEncoder
from ..graphs import GraphReplayer
from ..lora import ExpertLoraMergers, LoraMerger, LoraReport
from ..vae.decode import VAEDecodeOptions, VAEDecoder
from ..parallel.comm import group_size
from ..parallel.mesh import ParallelMesh
from ..parallel.runtime import broadcast_from_rank0, shared_noise, shared_seed
from ..parallel.vae_decode import parallel_vae_decode
from ..parallel.vae_encode import parallel_vae_encode
from ..parallel.vae_tiles import agree_on_plan, parallel_tiled_decode
from ..sampling import get_sampling_preset, make_sampling_solver
from ..runner import FirstFrame, ImageInputs, cfg_denoise, takes_prepared_text
from .first_frame import first_frame_latents
from .image_condition import ImagePrompt, condition_inputs
from .image_prompt import IMAGE_OPTIONAL, image_prompt
from ..placement import place, stage_placement

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    frames: np.ndarray | None  # uint8 [F, H, W, 3]; None on ranks other than 0 of a parallel launch
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    cache: CacheReport | None = None  # what a step cache computed (None: every step ran)


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance: float  # every step; with two experts, the high-noise expert's steps
    shift: float
    seed: int
    solver: str
    cache: CacheConfig | None = None
    cfg: bool = True  # False: the conditional branch alone, one forward per step (distilled models)
    image: ImagePrompt | None = None  # i2v/flf2v/ti2v: the first (and last) frame; width/height follow from it
    low_noise_guidance: float | None = None  # two-expert models: the low-noise expert's steps (else None)


def _export_limits(*components) -> ShapeRange | None:
    """The overlap of the exported components' shape ranges (None when none is exported)."""
    ranges = [c.manifest.shapes for c in components
              if isinstance(c, (ExportedDiT, ExportedVAEDecoder, ExportedVAEEncoder))]
    return functools.reduce(ShapeRange.overlap, ranges) if ranges else None


def _check_cache(cache):
    if cache is not None and not isinstance(cache, CacheConfig):
        raise ValueError(f"cache must be a CacheConfig or None; got {type(cache).__name__}")
    return cache


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """`[3, F, H, W]` in [-1, 1] -> uint8 `[F, H, W, 3]`, truncating like the official writer."""
    video = (video.float().clamp(-1, 1) + 1) / 2
    return (video * 255).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


class WanPipeline:
    """Wan2.1 text-to-video over a text encoder, a DiT (reference or executor) and the VAE.

    Build it with `WanPipeline.from_pretrained(path_or_preset)`; call `generate(prompt, ...)`.
    `mesh` (default: one process) is the parallel layout the DiT was set up for; `decode_group`
    the process group the VAE decode is split over (None: the mesh's sequence-parallel group).
    """

    def __init__(self, config: ModelConfig, text_encoder, dit, vae, *, device: torch.device,
                 dtype: torch.dtype, text_device: torch.device | None = None, offload: bool = False,
                 mesh: ParallelMesh | None = None, decode_group=None, cache: CacheConfig | None = None,
                 cache_calibration: Calibration | None = None, vae_decode: VAEDecodeOptions | None = None,
                 cuda_graphs: bool = True, vae_decoder=None, lora: LoraMerger | None = None,
                 image_encoder=None, vae_encoder=None, low_noise_dit=None, dit_folders: dict | None = None):
        self.mesh = ParallelMesh.single() if mesh is None else mesh
        vae_decode = VAEDecodeOptions() if vae_decode is None else vae_decode
        if not isinstance(vae_decode, VAEDecodeOptions):
            raise ValueError(f"vae_decode must be a VAEDecodeOptions or None; got {type(vae_decode).__name__}")
        if not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False; got {cuda_graphs!r}")
        # DiT steps and VAE chunks replayed as CUDA graphs (on CUDA; elsewhere off, with the reason).
        self.graphs = GraphReplayer(device, enabled=cuda_graphs)
        # An exported engine brings its own decoder (the ONNX/TensorRT chunks); else the static loop.
        if vae_decoder is not None and vae_decode != VAEDecodeOptions():
            raise ValueError(f"vae_decode: the VAE decoder is an exported engine ({vae_decoder.describe()}), whose "
                             f"decode is fixed in its graphs; drop the decode options (--vae-tiling, --vae-dtype, "
                             f"--vae-speed) or use an export folder without vae-decoder/")
        self.vae_decoder = VAEDecoder(vae, vae_decode) if vae_decoder is None else vae_decoder
        self.vae_encoder = vae_encoder  # an exported encoder (i2v/flf2v conditioning); None: vae.encode
        _check_cache(cache)
        self.cache = cache  # the default step cache of every request (None: off)
        self.cache_calibration = cache_calibration  # the model's own (its folder's or the published one)
        self.decode_group = decode_group
        self.config = config
        self.text_encoder = text_encoder
        self.dit = dit
        self.vae = vae
        if config.dit.uses_clip != (image_encoder is not None):
            what = (f"a {config.dit.model_type} model" if config.dit.clip
                    else "an i2v model without CLIP (Wan2.2 I2V-A14B)")
            raise ValueError(f"image_encoder: {what} {'needs one' if image_encoder is None else 'takes none'}")
        self.image_encoder = image_encoder  # the CLIP tower of Wan2.1 i2v/flf2v models (else None)
        if (config.experts is None) != (low_noise_dit is None):
            raise ValueError(f"low_noise_dit: model {config.name!r} "
                             f"{'is a two-expert model and needs one' if low_noise_dit is None else 'has one DiT'}")
        self.low_noise_dit = low_noise_dit  # a two-expert model's low-noise DiT (`dit` is then the high-noise one)
        # The videos every exported component can run (None: nothing is exported); others are refused by name.
        self.export_limits = _export_limits(dit, low_noise_dit, self.vae_decoder, vae_encoder)
        self.device = device
        self.dtype = dtype
        self.text_device = text_device or device
        self.offload = offload
        if lora is None:  # the LoRAs merged into the DiT (each expert's, for two)
            lora = LoraMerger(dit) if low_noise_dit is None else ExpertLoraMergers(dit, low_noise_dit)
        self.lora = lora
        # The checkpoint folders the DiT weights came from (None: one DiT, or each expert -> folder;
        # empty: seeded random weights): an export records their fingerprints.
        self.dit_folders = dict(dit_folders or {})

    @classmethod
    def from_pretrained(cls, path_or_preset: str, device=None, dtype=None, **options) -> "WanPipeline":
        """Load a model directory (original or diffusers layout) or build a preset with seeded weights.

        Options: `cuda_graphs` (default True: replay the executor's DiT steps as CUDA graphs on
        CUDA; eager elsewhere, `pipe.graphs.disabled_reason` says why), `cache` (a `CacheConfig`: the default step cache of every request; off by
        default, lossy when on), `vae_decode` (a `VAEDecodeOptions`: tiling, bf16; off by default,
        lossy when on), `t5_cpu` (keep the text encoder on the CPU), `offload` (move the text encoder off
        the GPU after encoding and the DiT off before VAE decode), `engine` ("executor", the
        default, or "reference"), and for the executor `attention` (a backend name, default
        "auto"), `ops` ("auto", "triton", "torch"), `cfg_batch` (default True: both CFG branches
        in one batch-2 forward) and `compile` (torch.compile the DiT block).

        Multi-GPU: `parallel=ParallelConfig(ulysses=, ring=, cfg=)` in every process of a
        `torchrun --nproc-per-node N` launch (N = the product of the degrees), with
        `dist_timeout_s` bounding every collective (a failed peer is reported within it).
        Invalid degrees are refused before the process group is created or any weight loaded.
        Call `wan_engine.parallel.shutdown()` when done. Only rank 0's `generate` returns frames
        (None elsewhere).
        """
        from ..assembly import load_pipeline_components

        return cls(**load_pipeline_components(path_or_preset, device=device, dtype=dtype, **options))

    # -- public API -------------------------------------------------------------------------------

    @property
    def is_parallel(self) -> bool:
        return self.mesh.config.world_size > 1

    @property
    def attention_backend(self) -> str:
        """The DiT's attention: the executor's resolved backend and how it was chosen
        ("sdpa-cudnn (auto: probe ...)"), or torch SDPA inside the eager reference."""
        ops = getattr(self.dit, "ops", None)
        return ops.attention.describe() if ops is not None else "reference (torch sdpa)"

    def generate(self, prompt: str, negative_prompt: str | None = None, size=None, num_frames=None,
                 steps=None, guidance=None, shift=None, seed=None, solver=None, progress=False,
                 cache: CacheConfig | None | str = "default", *, cfg: bool | None = None,
                 sampling: str | None = None, image=None, last_image=None,
                 low_noise_guidance: float | None = None) -> np.ndarray | None:
        """Return uint8 frames `[F, H, W, 3]` (None on ranks other than 0 of a parallel launch).
        Unset options take the model's official defaults; `cache` a `CacheConfig`, None (off) or
        "default" (the pipeline's); `cfg` False runs the conditional branch alone (one forward per
        step); `sampling` a named preset ("distill-4step") whose steps, shift, solver and cfg fill the
        options left unset. i2v/flf2v models: `image` (and for flf2v `last_image`), each a file
        path, PIL image or uint8 [H, W, 3] array; `size` is then the area to fill, the video takes
        the first image's aspect ratio (the official rule). Two-expert models (Wan2.2 A14B): `guidance`
        is the high-noise expert's, `low_noise_guidance` the low-noise one's; one given alone applies
        to both experts' steps (as the official and diffusers do), neither the model's defaults."""
        return self.run(prompt, negative_prompt, size, num_frames, steps, guidance, shift, seed, solver,
                        progress, cache, cfg=cfg, sampling=sampling, image=image, last_image=last_image,
                        low_noise_guidance=low_noise_guidance).frames

    def set_loras(self, loras) -> tuple[LoraReport, ...]:
        """Replace the merged LoRAs with `loras` (LoraSpec, "FILE[:STRENGTH]" or (file, strength);
        [] restores the base weights bit for bit) without reloading the model. Under several ranks,
        every rank must call it alike (each merges into its own copy of the weights). A two-expert model
        takes {"high_noise": [...], "low_noise": [...]} (an expert left out gets its base weights back)."""
        return self.lora.apply(loras)

    def make_request(self, prompt, negative_prompt=None, size=None, num_frames=None, steps=None,
                     guidance=None, shift=None, seed=None, solver=None, cache="default", cfg=None,
                     sampling=None, image=None, last_image=None, low_noise_guidance=None) -> Request:
        d = self.config.sample
        preset = None if sampling is None else get_sampling_preset(sampling)
        if preset is not None:  # the preset's values stand in for the model's defaults
            d = dataclasses.replace(d, steps=preset.steps, shift=preset.shift)
            solver = preset.solver if solver is None else validation.check_solver(solver)
            cfg = preset.cfg if cfg is None else cfg
            if steps is not None and steps != preset.steps:
                raise ValueError(f"steps must be {preset.steps} with sampling={sampling!r} (its solver's fixed "
                                 f"timesteps), got {steps!r}")
        if cfg is not None and not isinstance(cfg, bool):
            raise ValueError(f"cfg must be True, False or None, got {cfg!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
        width, height = validation.check_size(d.size if size is None else size, self.config.size_multiple)
        condition = None
        task = self.config.dit.task
        if task not in IMAGE_OPTIONAL or image is not None or last_image is not None:
            # The requested size is the area; the video takes the first image's aspect ratio.
            condition = image_prompt(image, last_image, width * height, task)
            if task == "ti2v" and not getattr(self.dit, "frame0_timestep", True):
                raise ValueError(f"image: image-to-video on a TI2V model runs frame 0 at its own timestep, which "
                                 f"this export ({self.dit.folder}) predates and does not take; export it again")
            width, height = condition.width, condition.height
            for note in condition.conversions():
                log.warning("converted %s", note)
        num_frames = validation.check_num_frames(d.num_frames if num_frames is None else num_frames)
        refused = None if self.export_limits is None else self.export_limits.refusal(num_frames, width, height)
        if refused is not None:
            raise ValueError(refused[1])
        low_noise_guidance = self._low_noise_guidance(low_noise_guidance, guidance)
        guidance = validation.check_guidance(d.guidance if guidance is None else guidance)
        if seed is not None:
            validation.check_seed(seed)
        if self.is_parallel:
            seed = shared_seed(seed, self.mesh)  # rank 0's seed, drawn there when None (collective)
        elif seed is None:
            seed = random.randrange(validation.SEED_BOUND)
        return Request(
            prompt=prompt,
            # As the official code: an empty negative prompt means the default one.
            negative_prompt=negative_prompt or d.negative_prompt,
            width=width,
            height=height,
            num_frames=num_frames,
            steps=validation.check_steps(d.steps if steps is None else steps),
            guidance=guidance,
            shift=validation.check_shift(d.shift if shift is None else shift),
            seed=seed,
            solver=solver if preset is not None else validation.check_solver(d.solver if solver is None else solver),
            cache=self.cache if isinstance(cache, str) and cache == "default" else _check_cache(cache),
            cfg=True if cfg is None else cfg,
            image=condition,
            low_noise_guidance=low_noise_guidance,
        )

    def run(self, prompt, negative_prompt=None, size=None, num_frames=None, steps=None, guidance=None,
            shift=None, seed=None, solver=None, progress=False, cache="default", *,
            on_step=None, cfg=None, sampling=None, image=None, last_image=None,
            low_noise_guidance=None) -> GenerationResult:
        """`on_step(done, total)` runs after every denoising step (see `runner.cfg_denoise`)."""
        req = self.make_request(prompt, negative_prompt, size, num_frames, steps, guidance, shift, seed, solver,
                                cache, cfg, sampling, image, last_image, low_noise_guidance)
        calibration = self._calibration(req.cache)  # a missing calibration fails before any compute
        if req.cache is not None:  # no threshold given: the model's recommended one, else the default
            own = calibration or self.cache_calibration
            req = dataclasses.replace(req, cache=req.cache.with_default_threshold(own.thresholds if own else None))
        timings: dict[str, float] = {}
        with torch.inference_mode():
            with self._timed(timings, "text_encoding"):
                self._place("text_encoding")
                context, context_null = self.encode_prompts(req.prompt, req.negative_prompt)
            image = None
            if req.image is not None:
                with self._timed(timings, "image_encoding"):
                    self._place("image_encoding")
                    image = self.encode_image(req)
            with self._timed(timings, "denoising"):
                self._place("denoising")
                step_cache = self.make_step_cache(req, calibration)
                latents = self.denoise(req, context, context_null, progress, step_cache, on_step=on_step, image=image)
                report = None
                if step_cache is not None:
                    report = cache_report(step_cache, req.cache, calibration, cfg_group=self.mesh.cfg_group,
                                          image=req.image is not None, cfg=req.cfg)
                    log.info("step cache %s: %s [%s]", report.policy, report.summary(), report.schedule_text())
            with self._timed(timings, "vae_decode"):
                self._place("vae_decode")
                video = self.decode(latents.float())
        return GenerationResult(None if video is None else frames_to_uint8(video[0]), req.seed, timings, report)

    # -- stages -----------------------------------------------------------------------------------

    def encode_prompts(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Both prompts -> `[1, text_len, text_dim]` each, zero beyond each prompt's real length."""
        embeds = self.text_encoder.encode([prompt, negative_prompt])
        text_len = self.config.dit.text_len
        padded = torch.zeros(2, text_len, embeds[0].shape[-1], device=self.device, dtype=self.dtype)
        for row, emb in zip(padded, embeds):
            row[: emb.shape[0]] = emb.to(device=self.device, dtype=self.dtype)
        return padded[:1], padded[1:]

    def encode_image(self, req: Request) -> ImageInputs | FirstFrame:
        """The request's CLIP features and DiT conditioning `y` (mask + VAE latents of the given
        frames), or for a TI2V model its first frame's latents. Under several ranks the VAE encode
        is split over the rows of the decode group (or the sequence-parallel group), and rank 0's
        values are broadcast, so every rank conditions alike."""
        encode = self.vae_encoder
        group = self._row_group(req.height // self.config.vae.spatial_stride)
        if encode is None and group is not None:
            def encode(video):
                return parallel_vae_encode(self.vae, video, group)
        if self.config.dit.task == "ti2v":
            z = first_frame_latents(req.image, self.vae, self.device, encode)
            return FirstFrame(broadcast_from_rank0(z.contiguous(), self.mesh) if self.is_parallel else z)
        clip_fea, y = condition_inputs(req.image, req.num_frames, self.vae, self.image_encoder, self.device,
                                       self.dtype, encode=encode)
        if self.is_parallel:
            clip_fea, y = (None if t is None else broadcast_from_rank0(t.contiguous(), self.mesh) for t in (clip_fea, y))
        return ImageInputs(clip_fea, y)

    def initial_noise(self, req: Request) -> torch.Tensor:
        vae = self.config.vae
        shape = (1, vae.z_dim, (req.num_frames - 1) // vae.temporal_stride + 1,
                 req.height // vae.spatial_stride, req.width // vae.spatial_stride)
        if self.is_parallel:
            return shared_noise(shape, req.seed, self.mesh, self.device)  # drawn on rank 0 (collective)
        generator = torch.Generator(device=self.device).manual_seed(req.seed)
        return torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)

    def denoise(self, req: Request, context, context_null, progress=False,
                step_cache: StepCache | None = None, *, on_step=None, image: ImageInputs | None = None) -> torch.Tensor:
        """The final latents; `step_cache` (from `make_step_cache`) skips the block stack on some
        steps; `image` the i2v/flf2v conditioning (`encode_image`)."""
        solver = make_sampling_solver(req.solver, req.steps, req.shift, req.seed, self.device)
        mesh = self.mesh if self.is_parallel else None
        latents = self.initial_noise(req)
        for stage, dit, guidance, steps in self._denoising_stages(req, solver):
            self._place(stage)
            latents = cfg_denoise(dit, latents, context, context_null, solver, guidance, progress=progress,
                                  mesh=mesh, step_cache=step_cache, graphs=self.graphs, on_step=on_step, cfg=req.cfg,
                                  image=image, steps=steps)
        return latents

    def _denoising_stages(self, req: Request, solver) -> list[tuple[str, object, float, range]]:
        """(placement stage, DiT, guidance, steps) of each run of steps: every step on the one DiT, or a
        two-expert model's high-noise steps (timestep at or above the boundary), then its low-noise ones."""
        if self.low_noise_dit is None:
            return [("denoising", self.dit, req.guidance, range(solver.num_steps))]
        switch = self.config.experts.first_low_noise_step(solver.timesteps)
        stages = [("denoising", self.dit, req.guidance, range(switch)),
                  ("denoising_low_noise", self.low_noise_dit, req.low_noise_guidance, range(switch, solver.num_steps))]
        return [stage for stage in stages if len(stage[3])]

    def make_step_cache(self, req: Request, calibration: Calibration | None) -> StepCache | None:
        """The request's step cache (its schedule fixed here for TeaCache and MagCache), or None."""
        if req.cache is None:
            return None
        timesteps = make_sampling_solver(req.solver, req.steps, req.shift, req.seed).timesteps.to(self.device)
        switch = None if self.low_noise_dit is None else self.config.experts.first_low_noise_step(timesteps)
        # MagCache4Wan2.2 caches only the low-noise steps of I2V-A14B (its "i2v" mode).
        return build_step_cache(req.cache, calibration, self.dit, timesteps, sp_group=self.mesh.sp_group,
                                graphs=self.graphs, switch=switch, cache_high_noise=self.config.dit.model_type != "i2v",
                                image=req.image is not None)

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Normalized latents `[B, z_dim, f, h, w]` -> video `[B, 3, F, H, W]` in [-1, 1].

        Parallel: every rank holds the same final latents. The lossless decode splits the rows:
        each rank decodes a slab and the slabs meet on rank 0, which returns the video (None
        elsewhere); the widest group with at least one latent row per rank is used (the decode
        group, then the sp group, else each rank decodes alone: only for latents with fewer rows
        than ranks); with the bf16 decode, on its bf16 copy. A tiled decode shares its tiles over
        the decode group instead (`parallel_tiled_decode`: the one-process tiled video, bit for bit).
        An exported decoder (ONNX/TensorRT chunks) runs whole on rank 0.
        """
        if not self.is_parallel:
            return self.vae_decoder(latents, self.graphs)
        decoder = self.vae_decoder
        if not isinstance(decoder, VAEDecoder):  # an exported decoder runs whole, on rank 0
            return decoder(latents, self.graphs).float() if self.mesh.rank == 0 else None
        latents = latents.to(next(decoder.vae.parameters()).dtype)  # the bf16 decode's copy, if asked
        tiles_group = self.decode_group if self.decode_group is not None else self.mesh.sp_group
        # Collective: an auto plan is sized from each rank's own free memory, so the ranks agree first.
        plan = decoder.last_plan = agree_on_plan(decoder.plan_for(latents), tuple(latents.shape[3:]), tiles_group,
                                                 latents.device)
        if plan.tile is not None:
            video = parallel_tiled_decode(decoder.vae, latents, plan, tiles_group, parts=decoder.parts(),
                                          output="rank0")
        else:
            video = parallel_vae_decode(decoder.vae, latents, self._row_group(latents.shape[3]), output="rank0")
        return video.float() if self.mesh.rank == 0 else None

    # -- helpers ----------------------------------------------------------------------------------

    def _row_group(self, latent_rows: int):
        """The group a row-parallel VAE decode or encode splits `latent_rows` over: the decode group,
        else the sequence-parallel group, if it has no more ranks than rows (None: this rank alone)."""
        return next((g for g in (self.decode_group, self.mesh.sp_group)
                     if g is not None and group_size(g) <= latent_rows), None)

    @contextmanager
    def _timed(self, timings: dict, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        timings[name] = time.perf_counter() - start

    def _low_noise_guidance(self, low_noise_guidance, guidance) -> float | None:
        """The low-noise expert's guidance: as given; else `guidance` when that was given (both
        experts alike, the official rule for a single value); else the model's default."""
        default = self.config.sample.low_noise_guidance
        if default is None:
            if low_noise_guidance is not None:
                raise ValueError(f"low_noise_guidance: model {self.config.name!r} has one DiT; it applies to "
                                 f"two-expert models (Wan2.2 A14B) only")
            return None
        if low_noise_guidance is not None:
            return validation.check_guidance(low_noise_guidance, "low_noise_guidance")
        return default if guidance is None else validation.check_guidance(guidance)

    def _calibration(self, cache: CacheConfig | None) -> Calibration | None:
        if self.low_noise_dit is not None:
            check_cache_for_experts(cache)
        if cache is not None:
            check_cache_runs_on(cache, self.dit)  # before any compute
        if cache is None or not cache.needs_calibration:
            return None
        if not takes_prepared_text(self.dit):
            raise ValueError("step caching needs the executor engine (the reference runs every step)")
        return resolve_calibration(cache.calibration, self.cache_calibration, self.config.name)

    def _place(self, stage: str) -> None:
        """Put the text encoder and the DiT where `stage` needs them (see `placement`)."""
        target = stage_placement(stage, device=self.device, text_device=self.text_device, offload=self.offload)
        moved = place(self.text_encoder.model, target.text_encoder)
        if self.image_encoder is not None:
            moved |= place(self.image_encoder, target.image_encoder)
        # An exported DiT's weights live in its runtime. Once a DiT moved, the graphs point at its old memory.
        dits = [(self.dit, target.dit)] + ([(self.low_noise_dit, target.low_noise_dit)] if self.low_noise_dit else [])
        for dit, device in dits:
            if isinstance(dit, torch.nn.Module) and place(dit, device):
                self.graphs.reset()
                moved = True
        if moved and self.device.type == "cuda":
            torch.cuda.empty_cache()  # return what moved off to the driver before the stage allocates
