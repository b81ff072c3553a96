"""`wan-engine` command line: generate, serve, calibrate, export, info, bench.

Multi-GPU: `torchrun --nproc-per-node N -m wan_engine.cli generate ... --ulysses U --ring R
[--cfg-parallel]` with N = U * R (* 2 with --cfg-parallel). Every process runs the pipeline; only
rank 0 prints and writes the video. A rank that fails makes the others exit non-zero within
--dist-timeout seconds (plus the compute between two collectives).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .lora_options import add_lora_options, check_lora_options, parse_lora_options


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 832x480 (WIDTHxHEIGHT), got {text!r}") from None
    return width, height


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text -> MP4")
    p.add_argument("--model", default="tiny", help="model directory (original or diffusers layout) or preset")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", default=None, metavar="FIRST.png",
                   help="i2v/flf2v models: the first frame (the video takes its aspect ratio; --size is the area)")
    p.add_argument("--last-image", default=None, metavar="LAST.png", help="flf2v models: the last frame")
    p.add_argument("--negative-prompt", default=None, help="default: the official Wan2.1 negative prompt")
    p.add_argument("--output", default="out.mp4", help="the .mp4 file to write (missing folders are created)")
    p.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT, multiples of 16 (default: preset's)")
    p.add_argument("--frames", type=int, default=None, help="4n+1 frames (default: preset's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None,
                   help="CFG scale (default: the model's); two-expert models: the high-noise expert's, and "
                        "given alone both experts'")
    p.add_argument("--low-noise-guidance", type=float, default=None,
                   help="two-expert models (Wan2.2 A14B): the low-noise expert's CFG scale (default: the model's, "
                        "3.0 for T2V-A14B)")
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--solver", default=None, help="unipc (default), dpm++ or euler")
    p.add_argument("--fps", type=int, default=None,
                   help="frame rate of the MP4 (default: the model's, 16 for Wan2.1 and A14B, 24 for TI2V-5B)")
    p.add_argument("--no-cfg", dest="cfg", action="store_const", const=False, default=None,
                   help="one DiT forward per step, conditional branch only (for CFG-distilled models; "
                        "explicit: --guidance 1 still runs both branches, as the official formula does)")
    p.add_argument("--sampling", default=None, metavar="PRESET",
                   help="a named sampling preset: distill-4step (LightX2V's 4 steps, shift 5, their solver, no "
                        "CFG; for the distill LoRAs); it fills --steps, --shift, --solver and --no-cfg left unset")
    _add_model_options(p)
    p.add_argument("--cache", default=None, metavar="POLICY[:THRESHOLD][,OPTION...]",
                   help="step cache (lossy, off by default): teacache:0.2, teacache:0.2,ret_steps, "
                        "magcache:0.12,K=2,retention=0.2 or fbcache:0.05")
    p.add_argument("--cache-calibration", default=None, metavar="FILE_OR_MODEL",
                   help="TeaCache/MagCache calibration: a JSON from `wan-engine calibrate` or a published model "
                        "name (t2v-1.3B, t2v-14B, i2v-14B-480p, i2v-14B-720p; MagCache also t2v-A14B, "
                        "i2v-A14B, ti2v-5B); default: the model's own")
    p.add_argument("--save-frames", default=None, metavar="FILE.npy",
                   help="also save the exact uint8 frames [F, H, W, 3] (the MP4 is lossy) as a .npy file")
    _add_parallel_options(p)
    p.set_defaults(func=cmd_generate)


def _engine(text: str) -> str:
    from ..engine_config import ENGINES

    kind, sep, folder = text.partition(":")
    if text in ENGINES or (sep and kind in ("onnx", "trt") and folder):
        return text
    raise argparse.ArgumentTypeError(f"--engine must be {', '.join(ENGINES)}, onnx:DIR or trt:DIR; got {text!r}")


def _add_model_options(p) -> None:
    """How the model is loaded and run: shared by generate and serve."""
    from ..engine_config import ATTENTION_BACKENDS

    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--t5-cpu", action="store_true", help="keep the text encoder on the CPU")
    p.add_argument("--offload", action="store_true",
                   help="move the text encoder off the GPU after encoding and the DiT off before VAE decode")
    p.add_argument("--engine", type=_engine, default="executor",
                   help="executor (fused kernels, default), reference (the eager official math), or an export: "
                        "onnx:DIR (onnxruntime) or trt:DIR (TensorRT engines)")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto",
                   help="attention backend of the executor (default: auto, the fastest available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the executor's DiT block")
    p.add_argument("--no-cfg-batch", dest="cfg_batch", action="store_false",
                   help="run the conditional and unconditional CFG branches as two forwards, not one batch")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay DiT steps and VAE chunks as CUDA graphs (default on; off on the CPU)")
    p.add_argument("--vae-tiling", default="off", metavar="off|auto|HxW",
                   help="tiled VAE decode (lossy, default off): auto picks tiles from the free GPU memory, "
                        "HxW sets the tile size in pixels (multiples of 8)")
    p.add_argument("--vae-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="VAE decode precision (default fp32, the official; bf16 is lossy)")
    p.add_argument("--vae-speed", default="", metavar="LEVER[,LEVER]",
                   help="VAE decode speed levers, off by default (rounding-level changes only): fused-norm-silu, "
                        "channels-last, cudnn-benchmark")
    add_lora_options(p)
    p.add_argument("--quant", choices=("fp8", "fp8-emulated"), default=None,
                   help="fp8 block GEMM weights (lossy, default off): fp8 needs an sm_89+ GPU; fp8-emulated "
                        "computes the same numerics on any device, slowly")


def _vae_decode_options(args):
    from ..vae.decode import VAEDecodeOptions
    from ..vae.tiling import TilePlan

    levers = {"fused-norm-silu": "fused_norm_silu", "channels-last": "channels_last",
              "cudnn-benchmark": "cudnn_benchmark"}
    asked = [v for v in args.vae_speed.split(",") if v]
    unknown = [v for v in asked if v not in levers]
    if unknown:
        raise ValueError(f"--vae-speed: unknown lever {unknown[0]!r}; choose from {', '.join(levers)}")
    return VAEDecodeOptions(tiling=TilePlan.parse(args.vae_tiling), dtype=args.vae_dtype,
                            **{levers[v]: True for v in asked})


def _add_parallel_options(p) -> None:
    multi = p.add_argument_group("multi-GPU (launch with torchrun --nproc-per-node N, N = product of degrees)")
    multi.add_argument("--ulysses", type=int, default=1,
                       help="Ulysses (all-to-all) sequence-parallel degree; must divide the model's heads")
    multi.add_argument("--ring", type=int, default=1, help="ring-attention sequence-parallel degree")
    multi.add_argument("--cfg-parallel", action="store_true",
                       help="run the conditional and unconditional branches on different ranks (doubles N)")
    multi.add_argument("--shard-weights", action="store_true",
                       help="split the DiT's block weights over the ranks of each sequence-parallel group (as the "
                            "official --dit_fsdp): 1/(ulysses x ring) of the blocks per GPU, gathered as they run")
    multi.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                       help="seconds a collective may wait for a peer before the run fails "
                            "(default 600; must exceed the slowest rank's model load)")


def _check_dist_timeout(args) -> float:
    from ..parallel import DEFAULT_TIMEOUT_S

    if args.dist_timeout is not None and not 0 < args.dist_timeout < float("inf"):
        raise ValueError(f"--dist-timeout must be a finite number of seconds > 0, got {args.dist_timeout}")
    return DEFAULT_TIMEOUT_S if args.dist_timeout is None else args.dist_timeout


def _pipeline_options(args, **extra) -> dict:
    """`WanPipeline.from_pretrained` keyword options from the model and parallel flags."""
    from ..env import LaunchEnv
    from ..parallel import ParallelConfig

    parallel = ParallelConfig(ulysses=args.ulysses, ring=args.ring, cfg=2 if args.cfg_parallel else 1)
    return dict(device=args.device, dtype=args.dtype, t5_cpu=args.t5_cpu, offload=args.offload,
                engine=args.engine, attention=args.attention, compile=args.compile, cfg_batch=args.cfg_batch,
                cuda_graphs=args.cuda_graphs, vae_decode=_vae_decode_options(args),
                loras=parse_lora_options(args), quant=args.quant, shard_weights=args.shard_weights,
                parallel=parallel, launch=LaunchEnv.from_environ(), **extra)


def _parse_cache(args):
    from ..cache import CacheConfig

    if args.cache is None:
        if args.cache_calibration is not None:
            raise ValueError("--cache-calibration needs --cache teacache:... or --cache magcache:...")
        return None
    return CacheConfig.parse(args.cache, calibration=args.cache_calibration)


def _check_given(args) -> None:
    from .. import validation

    checks = [(args.frames, validation.check_num_frames),
              (args.steps, validation.check_steps), (args.guidance, validation.check_guidance),
              (args.low_noise_guidance, lambda g: validation.check_guidance(g, "--low-noise-guidance")),
              (args.shift, validation.check_shift), (args.solver, validation.check_solver)]
    for value, check in checks:
        if value is not None:
            check(value)
    if args.seed is not None and not 0 <= args.seed < validation.SEED_BOUND:
        raise ValueError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.sampling is not None:
        from ..sampling import get_sampling_preset

        get_sampling_preset(args.sampling)
    _check_dist_timeout(args)
    if args.fps is not None:
        validation.check_fps(args.fps)
    validation.check_output_file(args.output, "--output", ".mp4")
    if args.save_frames is not None:
        validation.check_output_file(args.save_frames, "--save-frames", ".npy")
    _check_model_options(args)  # last: it reads the model's headers


def _check_model_options(args) -> None:
    """Check what depends on the model before the load (its type, experts, grid and default size
    come from the preset or the checkpoint's headers): --size on the model's pixel grid,
    --low-noise-guidance, and --image/--last-image read and sized against the model's type,
    stating any conversion."""
    from .. import validation
    from ..assembly import peek_model
    from ..configs import latent_strides, size_multiple
    from ..pipelines.image_prompt import IMAGE_OPTIONAL, image_prompt

    dit, sample = peek_model(args.model)
    if args.size is not None:  # the DiT's output channels name its VAE, hence the VAE's stride
        validation.check_size(args.size, size_multiple(latent_strides(dit.out_dim)[1], dit.patch_size))
    two_experts = sample.low_noise_guidance is not None
    if args.low_noise_guidance is not None and not two_experts:
        raise ValueError(f"--low-noise-guidance applies to two-expert models (Wan2.2 A14B); {args.model} has one DiT")
    check_lora_options(args, two_experts)
    if dit.task in IMAGE_OPTIONAL and args.image is None and args.last_image is None:
        return
    width, height = sample.size if args.size is None else args.size
    prompt = image_prompt(args.image, args.last_image, width * height, dit.task,
                          names=("--image", "--last-image"))
    for note in prompt.conversions():
        print(f"converted {note}")


def cmd_generate(args) -> int:
    from ..engine import Engine, GenerationRequest
    from ..parallel import shutdown
    from ..pipelines.t2v import WanPipeline

    _check_given(args)  # refuse bad options before the (possibly long) model load
    cache = _parse_cache(args)
    timeout_s = _check_dist_timeout(args)
    options = _pipeline_options(args, dist_timeout_s=timeout_s, cache=cache)
    start = time.perf_counter()
    pipe = WanPipeline.from_pretrained(args.model, **options)
    load_s = time.perf_counter() - start
    engine = Engine(pipe, dist_timeout_s=timeout_s)  # the --cache policy is the pipeline's default
    request = GenerationRequest(args.prompt, args.negative_prompt, args.size, args.frames, args.steps,
                                args.guidance, args.shift, args.seed, args.solver, cfg=args.cfg,
                                sampling=args.sampling, image=args.image, last_image=args.last_image,
                                guidance_scale_2=args.low_noise_guidance)
    result = engine.generate(request, progress=pipe.mesh.rank == 0)  # PeerFailure names the failed collective
    # Reached only when every collective succeeded; after a failure, tearing the group down could
    # wait on the failed peer, so the process just exits.
    shutdown()
    if result.frames is None:  # ranks other than 0: their share is in rank 0's frames
        return 0
    _write_outputs(args, result, load_s, options["parallel"], pipe.attention_backend, _run_notes(pipe),
                   fps=pipe.config.sample.fps)
    return 0


def _run_notes(pipe) -> list[str]:
    """How the steps and the decode ran: graphs (or why not), the VAE tiling and precision."""
    graphs = "on" if pipe.graphs.active else f"off ({pipe.graphs.disabled_reason})"
    notes = [f"cuda graphs: {graphs}", f"vae decode: {pipe.vae_decoder.describe()}"]
    shards = getattr(pipe.dit, "weight_shards", None)  # an exported DiT has none
    if shards is not None:
        held = sum(s.shard_bytes + s.buffer_bytes for s in shards)
        notes.append(f"dit weights: blocks and text K/V split over {shards[0].world} ranks, {held / 2**20:.1f} MiB "
                     f"of them on each (shards and gather buffers)")
    return notes


def _write_outputs(args, result, load_s: float, parallel, attention: str, notes=(), fps: int = 16) -> None:
    """The MP4 at --fps (else the model's `fps`), the frames if asked, and the run's summary."""
    import numpy as np

    from ..video import save_video

    path = save_video(result.frames, args.output, fps=args.fps or fps)
    if args.save_frames is not None:
        frames_path = Path(args.save_frames).expanduser()
        frames_path.parent.mkdir(parents=True, exist_ok=True)
        partial = frames_path.with_name(f".{frames_path.name}.partial.npy")  # renamed when complete
        np.save(partial, result.frames)
        os.replace(partial, frames_path)
    f, h, w, _ = result.frames.shape
    layout = f", {parallel.describe()}" if parallel.world_size > 1 else ""
    print(f"wrote {path} ({f} frames, {w}x{h}, seed {result.seed}{layout})")
    print(f"  attention: {attention}")
    for note in notes:
        print(f"  {note}")
    if result.cache is not None:
        calibration = f", calibration {result.cache.calibration}" if result.cache.calibration else ""
        print(f"  cache: {result.cache.summary()} ({result.cache.policy}{calibration})")
        branches = "cond / uncond" if len(result.cache.computed) == 2 else "cond"
        print(f"  cache schedule: {result.cache.schedule_text()}  (C computed, r reused; {branches})")
    print(f"  load           {load_s:8.2f} s")
    for stage, seconds in result.timings.items():
        print(f"  {stage:<14} {seconds:8.2f} s")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-style /v1/videos HTTP server (durable jobs, one model loaded once)")
    p.add_argument("--model", default="tiny", help="model directory (original or diffusers layout) or preset")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="when set, every /v1 route needs 'Authorization: Bearer KEY'")
    p.add_argument("--max-queue", type=int, default=16, help="jobs that may wait; more get 429 (default 16)")
    p.add_argument("--output-dir", default="wan_videos", help="where the job database and the MP4s live")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body (default 64 KiB; 32 MiB for an i2v/flf2v model, whose requests "
                        "carry images)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up generation at start")
    _add_model_options(p)
    _add_parallel_options(p)
    p.set_defaults(func=cmd_serve)


SERVE_PACKAGES = ("fastapi", "starlette", "uvicorn", "multipart", "prometheus_client")  # the serve extra


def cmd_serve(args) -> int:
    try:
        from ..serve.server import ServeConfig, run_server
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing not in SERVE_PACKAGES:
            raise
        raise ValueError(f"serve needs the serve extra, and {missing} is not installed: "
                         f"pip install 'wan_engine[serve]' (fastapi, uvicorn, python-multipart, "
                         f"prometheus-client)") from None

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    timeout_s = _check_dist_timeout(args)
    config = ServeConfig(model=args.model, host=args.host, port=args.port, api_key=args.api_key,
                         max_queue=args.max_queue, output_dir=args.output_dir, max_body_bytes=args.max_body_bytes,
                         warmup=args.warmup, dist_timeout_s=timeout_s)
    return run_server(config, _pipeline_options(args))


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the TeaCache / MagCache calibration of a model from uncached runs")
    p.add_argument("--cache", choices=("teacache", "magcache", "all"), default="all")
    p.add_argument("--model", required=True, help="model directory or preset")
    p.add_argument("--output", required=True, help="the calibration .json to write")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="one prompt per line (default: the model's calibration prompts; 8 for shapes and shapes-a14b)")
    p.add_argument("--seeds", type=int, default=1, help="runs per prompt, seeds 0..N-1 (default 1)")
    p.add_argument("--images", nargs="+", default=None, metavar="IMAGE",
                   help="first frames, prompt i taking image i mod N: needed by i2v and flf2v models; a ti2v "
                        "model also calibrates its image-request MagCache ratios from them")
    p.add_argument("--last-images", nargs="+", default=None, metavar="IMAGE", help="last frames (flf2v), alike")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--size", type=_size, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from .. import validation
    from ..cache.fit import read_prompts
    from ..configs import PRESETS, SHAPES_PRESETS, get_preset
    from ..pipelines.calibrate import calibrate_pipeline, check_calibration_images
    from ..pipelines.t2v import WanPipeline

    validation.check_output_file(args.output, "--output", ".json")
    if not 1 <= args.seeds <= 64:
        raise ValueError(f"--seeds must be in [1, 64], got {args.seeds}")
    prompts = read_prompts(args.prompts) if args.prompts else None
    if args.model in PRESETS:  # a preset's task is known: refuse missing or unusable images before the load
        check_calibration_images(get_preset(args.model).dit.task, args.images, args.last_images, args.cache)
    pipe = WanPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if prompts is None and pipe.config.name in SHAPES_PRESETS:
        from ..shapes.world import training_combos

        prompts = [c.caption for c in training_combos()[::27]]  # 8 captions across the world
    calibration = calibrate_pipeline(pipe, prompts, seeds=args.seeds, policies=args.cache, steps=args.steps,
                                     size=args.size, num_frames=args.frames, images=args.images,
                                     last_images=args.last_images, progress=print)
    path = calibration.save(args.output)
    fitted = [name for name in ("teacache", "magcache", "magcache_image") if calibration.to_json().get(name)]
    print(f"wrote {path} ({' and '.join(fitted)} of {calibration.model})")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a model directory's layout, type and config, a LoRA file's "
                                    "format, rank, targets and coverage, or an export directory's components")
    p.add_argument("path", help="a model, export or LoRA path, or a preset name")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from ..configs import PRESETS
    from ..export.info import describe_export, is_export_dir
    from ..loading.info import describe_model
    from ..loading.layout import DIT_STEM
    from ..lora import describe_lora

    if is_export_dir(args.path):
        print(describe_export(args.path))
        return 0
    if not Path(args.path).exists() and args.path in PRESETS:
        print(_describe_preset(args.path, describe_model))
        return 0
    # A weight file is a LoRA (a model is a directory; its own DiT file gets describe_model's message).
    path = Path(args.path)
    is_lora = path.is_file() and not path.name.startswith(DIT_STEM)
    print(describe_lora(args.path) if is_lora else describe_model(args.path))
    return 0


def _describe_preset(name: str, describe_model) -> str:
    """A preset name: its embedded weights' folder described like any model directory, or its config
    when its weights are seeded random."""
    import dataclasses

    from ..assembly.pipeline import embedded_weights
    from ..configs import get_preset

    folder = embedded_weights(name)
    if folder is not None:
        return f"{'preset':>13}: {name}, trained weights embedded in the package\n" + describe_model(folder)
    dit = get_preset(name).dit
    return "\n".join([f"{'preset':>13}: {name}, seeded random weights (no checkpoint: its video is noise; "
                       f"give a model directory for real weights)",
                       f"{'dit config':>13}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(dit).items())])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wan-engine", description=__doc__)
    from ..bench.cli import add_bench_parser
    from .export import add_export_parser

    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    _add_calibrate(sub)
    add_export_parser(sub)
    _add_info(sub)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..attention import AttentionBackendError
    from ..parallel.runtime import PeerFailure

    try:
        return args.func(args)
    except (ValueError, OSError, AttentionBackendError) as e:  # OSError: unwritable output, full disk, ...
        print(f"wan-engine: error: {e}", file=sys.stderr)
        return 2
    except PeerFailure as e:
        print(f"wan-engine: error: {e}", file=sys.stderr)
        # The process group is broken: at interpreter exit its gloo/NCCL threads can meet the reset
        # connection and abort (SIGABRT, seen on CI), so leave now with the documented status 1.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
