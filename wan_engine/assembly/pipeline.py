"""Assemble a pipeline's components from a model directory or from a preset's seeded weights.

The one place that knows every layer: it reads checkpoints (`loading`), builds the reference
modules, wraps the DiT in the executor and applies sequence parallelism to it.

Multi-process launches (torchrun) are set up here too, in an order that refuses a bad layout
before any work: the degrees are checked against the launch and the model's head count (read
from a preset or from tensor headers, no weights), then the process group and mesh are created,
then the weights are loaded, then sequence parallelism is applied to the executor.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from ..cache import CacheConfig, Calibration, published
from ..cache.calibration import FILE_NAME as CALIBRATION_FILE
from ..configs import (
    PRESETS, DiTConfig, ImageEncoderConfig, ModelConfig, SampleDefaults, T5Config, VAEConfig, get_preset,
    preset_for,
)
from ..device import resolve_device, resolve_dtype
from ..engine_config import ENGINES, EngineConfig
from ..env import LaunchEnv
from ..executor import build_executor
from ..executor.fp8 import check_fp8_support
from ..loading.checkpoint import load_into, read_safetensors_shapes
from ..loading.dit_format import infer_dit_config
from ..loading.errors import CheckpointError
from ..loading.layout import DIT_STEM, ORIGINAL_EXPERTS, detect_layout
from ..loading.random_init import random_state_dict
from ..loading.t5_format import infer_t5_config
from ..lora import EXPERTS, ExpertLoraMergers, FixedLoras, LoraMerger, parse_expert_loras, parse_loras
from ..parallel.apply import apply_parallel
from ..parallel.weight_shard import shard_block_weights
from ..parallel.config import ParallelConfig
from ..parallel.mesh import ParallelMesh
from ..parallel.runtime import DEFAULT_TIMEOUT_S, init_distributed, rank_device
from ..placement import stage_placement
from ..reference.dit import WanDiT
from ..reference.text_encoder import TextEncoder
from ..reference.vae import WanVAE
from .components import load_dit, load_text_encoder, load_vae
from .experts import check_expert_options, expert_split, has_experts, load_low_noise_dit, random_low_noise_dit
from .image_encoder import load_image_encoder, random_image_encoder
from .text_encoder import random_text_encoder


def random_components(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                      dit_device: torch.device | None = None, with_dit: bool = True):
    """Reference DiT, VAE and text encoder with seeded random weights (the random-weight presets);
    the DiT on `dit_device` (default `device`; None without `with_dit`). See `random_image_encoder`
    for i2v/flf2v."""
    with torch.device("meta"):
        dit = WanDiT(config.dit, compute_dtype=dtype)
        vae = WanVAE(config.vae)
    dit = None if not with_dit else load_into(dit, random_state_dict(dit, seed), dtype=dtype,
                                              device=dit_device or device, source=f"preset {config.name}")
    vae = load_into(vae, random_state_dict(vae, seed + 1), dtype=torch.float32, device=device,
                    source=f"preset {config.name}")
    text = random_text_encoder(config.t5, seed=seed + 2, dtype=dtype, device=device)
    return text, None if dit is None else dit.eval().requires_grad_(False), vae.eval().requires_grad_(False)


PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the installed wan_engine folder


def embedded_weights(name: str) -> Path | None:
    """The folder of a preset's embedded weights (official layout), None for random-weight presets.
    A preset whose folder is missing is an error saying how to make it."""
    if name not in PRESETS or PRESETS[name].weights is None:
        return None
    folder = PACKAGE_ROOT / PRESETS[name].weights
    dit_folder = folder / ORIGINAL_EXPERTS[0] if PRESETS[name].experts is not None else folder
    if not (dit_folder / "config.json").is_file():
        raise CheckpointError(f"preset {name!r}: its weights are missing from {folder} "
                              f"(train them with scripts/train_shapes.py or, for shapes-a14b, "
                              f"scripts/train_shapes_experts.py; or reinstall the package)")
    return folder


def peek_dit_config(path_or_preset: str | ModelConfig) -> DiTConfig:
    """The DiT config of a preset, or of a model directory read from its safetensors headers and
    config.json only (no tensor data): cheap enough to validate options before the load."""
    if isinstance(path_or_preset, ModelConfig):
        return path_or_preset.dit
    path = Path(str(path_or_preset)).expanduser()
    if path.is_dir():
        layout = detect_layout(path)
        return infer_dit_config(read_safetensors_shapes(layout.dit_dir, DIT_STEM), layout.dit_config)
    if str(path_or_preset) in PRESETS:
        return get_preset(str(path_or_preset)).dit
    raise _not_a_model(path_or_preset)


def peek_model(path_or_preset: str) -> tuple[DiTConfig, SampleDefaults]:
    """(DiT config, sampling defaults) of a preset or model directory, from headers only."""
    if str(path_or_preset) in PRESETS:
        preset = get_preset(str(path_or_preset))
        return preset.dit, preset.sample
    dit = peek_dit_config(path_or_preset)
    experts = has_experts(path_or_preset)
    preset = preset_for(dit.dim, dit.task, Path(str(path_or_preset)).expanduser().resolve().name, experts)
    return dit, (preset or _fallback_preset(dit.task, experts)).sample


def _fallback_preset(task: str, experts: bool = False) -> ModelConfig:
    """The published preset whose sampling defaults a custom model of `task` takes."""
    if experts:
        return get_preset("i2v-A14B" if task == "i2v" else "t2v-A14B")
    return get_preset({"t2v": "t2v-14B", "i2v": "i2v-14B-480p", "flf2v": "flf2v-14B", "ti2v": "ti2v-5B"}[task])


def _not_a_model(path_or_preset) -> ValueError:
    path = Path(str(path_or_preset)).expanduser()
    if path.is_file():
        return CheckpointError(f"model {str(path_or_preset)!r} is a file; pass the model directory that holds "
                               f"the checkpoint files (or a preset: {', '.join(sorted(PRESETS))})")
    return ValueError(f"model {path_or_preset!r} is neither an existing model directory nor a preset "
                      f"({', '.join(sorted(PRESETS))})")


def setup_parallel(path_or_preset: str, device: torch.device, engine: str, parallel: ParallelConfig | None,
                   mesh: ParallelMesh | None, launch: LaunchEnv | None, dist_timeout_s: float
                   ) -> tuple[ParallelMesh, torch.device, object]:
    """(mesh, this rank's device, VAE decode group) of a launch, refusing a bad layout first.

    Without `mesh`, joins the launch described by `launch` (default: torchrun's environment) with
    `init_distributed`; the decode group is then the whole launch. With a `mesh` built by the
    caller, the decode group is left to the pipeline (None: the mesh's own groups).
    """
    if mesh is not None and not isinstance(mesh, ParallelMesh):
        raise ValueError(f"mesh must be a ParallelMesh or None, got {type(mesh).__name__}")
    if parallel is None:
        parallel = ParallelConfig() if mesh is None else mesh.config
    if not isinstance(parallel, ParallelConfig):
        raise ValueError(f"parallel must be a ParallelConfig or None, got {type(parallel).__name__}")
    if mesh is not None and mesh.config != parallel:
        raise ValueError(f"parallel ({parallel.describe()}) contradicts the mesh's layout ({mesh.config.describe()})")
    if parallel.sp_degree > 1 and engine != "executor":
        raise ValueError(f"sequence parallelism ({parallel.describe()}) needs engine='executor'; "
                         f"engine={engine!r} runs each step whole on one process (CFG parallelism alone works "
                         f"with every engine)")
    launch = LaunchEnv.from_environ() if launch is None and mesh is None else launch
    if mesh is None and parallel.world_size == 1 and not launch.is_distributed:
        return ParallelMesh.single(), device, None  # the plain single-process path, nothing to check
    num_heads = peek_dit_config(path_or_preset).num_heads
    if mesh is not None:
        parallel.validate(num_heads, parallel.world_size)
        return mesh, device, None
    # Checks the degrees against the launch and the heads before any process group exists.
    mesh = init_distributed(parallel, launch, device, dist_timeout_s, num_heads=num_heads)
    world = None
    if launch.is_distributed:
        import torch.distributed as dist

        world = dist.group.WORLD  # the group init_distributed just laid the mesh over
    return mesh, rank_device(device, launch), world


def load_pipeline_components(path_or_preset: str, device=None, dtype=None, *, t5_cpu: bool = False,
                             offload: bool = False, engine: str = "executor", attention: str = "auto",
                             ops: str = "auto", cfg_batch: bool = True, compile: bool = False,
                             seed: int = 0, parallel: ParallelConfig | None = None,
                             mesh: ParallelMesh | None = None, launch: LaunchEnv | None = None,
                             dist_timeout_s: float = DEFAULT_TIMEOUT_S, cache: CacheConfig | None = None,
                             vae_decode=None, cuda_graphs: bool = True, loras=None, quant: str | None = None,
                             shard_weights: bool = False) -> dict:
    """Keyword arguments for `WanPipeline(...)`.

    engine "executor" (default) wraps the loaded reference DiT's weights in the optimized
    executor with the given attention/ops backends, CFG batching and compile options; engine
    "reference" keeps the eager reference (which ignores those options).

    parallel: the degrees of a multi-process launch (default: one process). Each process of a
    `torchrun --nproc-per-node N` launch calls this; it joins the process group (gloo on the CPU,
    NCCL on cuda:LOCAL_RANK; every collective bounded by `dist_timeout_s`) and applies sequence
    parallelism to the executor. `launch` defaults to torchrun's environment; `mesh` instead
    takes a mesh the caller built on its own process group. A layout that the launch or the model
    cannot run is refused with a ValueError before the process group or any weight is touched.

    loras: LoRAs merged into the DiT after the load (`wan_engine.lora.parse_loras` forms; the
    pipeline's `set_loras` replaces them later). quant: "fp8" (sm_89+ GPUs) or "fp8-emulated" (any
    device, for numerics) quantizes the executor's block GEMM weights after the LoRAs are merged.
    shard_weights: under sequence parallelism, split the DiT's block weights over the ranks of each
    sp group (`parallel/weight_shard.py`): the DiT is built on the CPU, and each rank keeps 1/sp of
    the blocks on `device`, gathered block by block as they run.

    A two-expert model (Wan2.2 A14B) loads both DiTs, and each gets the same executor, quantization,
    sequence parallelism and weight split; the result then holds `low_noise_dit` (else None).
    """
    requested, exported = engine, parse_exported_engine(engine)
    if exported is not None:
        engine = "reference"  # the model loads as usual; its DiT is then replaced by the exported one
    elif engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, onnx:DIR or trt:DIR, got {engine!r}")
    if cache is not None and not isinstance(cache, CacheConfig):
        raise ValueError(f"cache must be a CacheConfig or None; got {type(cache).__name__}")
    if cache is not None and engine != "executor" and exported is None:
        raise ValueError("step caching (cache=...) needs engine='executor' (or an exported one)")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    two_experts = has_experts(path_or_preset)
    lora_specs = parse_model_loras(loras, two_experts)
    check_lora_files(lora_specs.values() if two_experts else [lora_specs])
    check_expert_options(path_or_preset, cache=cache)
    check_exported_options(exported, lora_specs.values() if two_experts else [lora_specs], quant)
    check_quant(quant, engine, device, dtype)
    # Validate the engine options before the (possibly long) load.
    engine_config = EngineConfig(engine=engine, attention=attention, ops=ops, cfg_batch=cfg_batch,
                                 compile=compile, dtype=dtype)
    mesh, device, decode_group = setup_parallel(path_or_preset, device, requested, parallel, mesh, launch,
                                                dist_timeout_s)
    check_shard_weights(shard_weights, requested, mesh, offload)
    if engine_config.attention == "auto" and mesh.config.world_size > 1:
        # Each rank would time its own probe and could pick another backend than its peers;
        # the documented order gives every rank the same kernel (and the same numerics).
        engine_config = dataclasses.replace(engine_config, attention="auto-order")
    text_device = torch.device("cpu") if t5_cpu else device
    # Where the components wait until their stage runs (offload: on the CPU).
    home = stage_placement("load", device=device, text_device=text_device, offload=offload)
    if shard_weights:  # the whole DiT waits on the CPU; each rank moves only its share to `device`
        home = dataclasses.replace(home, dit=torch.device("cpu"), low_noise_dit=torch.device("cpu"))
    text_home = home.text_encoder
    # bf16 on the CPU is slow in most torch builds, but the 5.7B-parameter umT5 needs it for memory.
    text_dtype = dtype if text_device.type == "cuda" else (torch.bfloat16 if t5_cpu else dtype)

    path = Path(str(path_or_preset)).expanduser()
    embedded = None if isinstance(path_or_preset, ModelConfig) else embedded_weights(str(path_or_preset))
    if embedded is not None:
        path = embedded
    image_encoder = low_noise = None
    load_dits = exported is None  # an exported DiT's weights are in its graphs: none is loaded here
    dit_folders = {}  # where the DiT weights are read from: None (one DiT) or each expert -> folder
    if isinstance(path_or_preset, ModelConfig):
        config = path_or_preset  # a custom size with seeded random weights (benchmarks, memory tests)
        text, dit, vae = random_components(config, device, dtype, seed, dit_device=home.dit, with_dit=load_dits)
        if config.experts is not None and load_dits:
            low_noise = random_low_noise_dit(config, dtype, home.low_noise_dit, seed)
        text = TextEncoder(text.model, text.tokenizer, device=text_home, dtype=text_dtype)
        image_encoder = preset_image_encoder(config, seed, dtype, home.image_encoder)
    elif path.is_dir():
        layout = detect_layout(path)
        dit_config = peek_dit_config(layout.root)
        image_encoder = None
        if dit_config.uses_clip:
            image_encoder = load_image_encoder(layout.root, dtype=dtype, device=home.image_encoder)
            dit_config = image_conditioned(dit_config, image_encoder.cfg, layout.root)
        dit_folders = ({None: layout.dit_dir} if not layout.has_experts
                       else dict(zip(EXPERTS, (layout.dit_dir, layout.low_noise_dit_dir))))
        dit = load_dit(layout.root, dtype=dtype, device=home.dit, config=dit_config) if load_dits else None
        if layout.has_experts and load_dits:
            low_noise = load_low_noise_dit(layout, dit_config, dtype, home.low_noise_dit)
        preset = (get_preset(str(path_or_preset)) if embedded
                  else preset_for(dit_config.dim, dit_config.task, path.resolve().name, layout.has_experts))
        experts = expert_split(layout, preset) if layout.has_experts else None
        if layout.vae is None:
            raise CheckpointError(f"{path}: no VAE in this {layout.kind} directory")
        vae = load_vae(layout.vae, device=device)
        check_latent_channels(dit_config, vae.config, path)
        config = ModelConfig(
            name=preset.name if embedded else f"{preset.name if preset else 'custom'} ({path.name})",
            dit=dit_config,
            vae=vae.config,
            sample=(preset or _fallback_preset(dit_config.task, layout.has_experts)).sample,
            experts=experts,
        )
        text = load_text_encoder(layout.root, dtype=text_dtype, device=text_home, text_len=dit_config.text_len)
        config = dataclasses.replace(config, t5=text_config(text),
                                     weights=preset.weights if embedded else None,
                                     image_encoder=None if image_encoder is None else image_encoder.cfg)
    elif str(path_or_preset) in PRESETS:
        config = get_preset(str(path_or_preset))
        if not config.name.startswith("tiny"):
            warnings.warn(f"preset {config.name!r} has no embedded weights: using seeded random weights "
                          f"(for benchmarks; the video will be noise)", stacklevel=2)
        text, dit, vae = random_components(config, device, dtype, seed, dit_device=home.dit, with_dit=load_dits)
        text = TextEncoder(text.model, text.tokenizer, device=text_home, dtype=text_dtype)
        image_encoder = preset_image_encoder(config, seed, dtype, home.image_encoder)
        if config.experts is not None and load_dits:
            low_noise = random_low_noise_dit(config, dtype, home.low_noise_dit, seed)
    else:
        raise _not_a_model(path_or_preset)
    folder = None if isinstance(path_or_preset, ModelConfig) or not path.is_dir() else path
    vae_decoder = vae_encoder = None
    if load_dits:
        dit = engine_dit(dit, engine, engine_config, device, home.dit)
        if low_noise is not None:
            low_noise = engine_dit(low_noise, engine, engine_config, device, home.low_noise_dit)
        lora = LoraMerger(dit) if low_noise is None else ExpertLoraMergers(dit, low_noise)
        lora.apply(lora_specs)  # merge first, then quantize
        dit = finish_dit(dit, engine, mesh, quant, shard_weights, device)
        if low_noise is not None:
            low_noise = finish_dit(low_noise, engine, mesh, quant, shard_weights, device)
    else:
        dit, low_noise, vae_decoder, vae_encoder = exported_components(exported, config.dit, vae,
                                                                       config.experts is not None, dit_folders)
        lora = FixedLoras(f"the DiT is an exported engine ({exported[1]}) whose weights, LoRAs included, are fixed "
                          f"in its graphs; export the model again with the LoRAs (wan-engine export --lora)")
    return dict(config=config, text_encoder=text, dit=dit, vae=vae, device=device, dtype=dtype,
                text_device=text_device, offload=offload, mesh=mesh, decode_group=decode_group, cache=cache,
                vae_decode=vae_decode, cuda_graphs=cuda_graphs, vae_decoder=vae_decoder, vae_encoder=vae_encoder,
                lora=lora, low_noise_dit=low_noise, dit_folders=dit_folders,
                cache_calibration=model_calibration(folder, config.name), image_encoder=image_encoder)


def engine_dit(dit, engine: str, engine_config: EngineConfig, device: torch.device, weights_device: torch.device):
    """A loaded reference DiT in the engine that runs it: the executor (ops for `device`, its weights
    left where they wait: the CPU with offload, so an offloaded DiT never occupies the GPU before
    its stage), or the reference itself."""
    if engine != "executor":
        return dit
    return build_executor(dit, engine_config, device, release_reference=True, weights_device=weights_device)


def finish_dit(dit, engine: str, mesh: ParallelMesh, quant: str | None, shard_weights: bool, device: torch.device):
    """After the LoRAs are merged: the quantization, then sequence parallelism and the weight split."""
    if quant is not None:
        dit.quantize_weights(quant)
    if engine == "executor" and mesh.sp_size > 1:
        dit = apply_parallel(dit, mesh)
        if shard_weights:
            dit = shard_block_weights(dit, mesh.sp_group, device)
    return dit


def check_latent_channels(dit: DiTConfig, vae: VAEConfig, root: Path) -> None:
    """The DiT denoises the VAE's latents: its channels are the VAE's (16: Wan2.1's VAE, which the
    A14B models share; 48: Wan2.2's, TI2V-5B's)."""
    if dit.out_dim != vae.z_dim:
        raise CheckpointError(f"{root}: the DiT predicts {dit.out_dim} latent channels but the VAE has {vae.z_dim}; "
                              f"a Wan2.1/A14B DiT takes Wan2.1_VAE.pth (16), TI2V-5B's Wan2.2_VAE.pth (48)")


def image_conditioned(dit: DiTConfig, encoder: ImageEncoderConfig, root: Path) -> DiTConfig:
    """The DiT config with the image encoder's feature shape (an i2v checkpoint does not record
    its rows per image; flf2v's position table does, and must agree)."""
    if dit.image_dim != encoder.dim:
        raise CheckpointError(f"{root}: the DiT's image projection takes {dit.image_dim}-wide features, the image "
                              f"encoder gives {encoder.dim}")
    if dit.model_type == "flf2v" and dit.image_tokens != encoder.tokens:
        raise CheckpointError(f"{root}: the DiT's emb_pos holds 2 x {dit.image_tokens} rows, the image encoder "
                              f"gives {encoder.tokens} per image")
    return dataclasses.replace(dit, image_tokens=encoder.tokens)


def preset_image_encoder(config: ModelConfig, seed: int, dtype: torch.dtype, device: torch.device):
    """The seeded random CLIP tower of an i2v/flf2v preset (None for t2v and models without CLIP)."""
    if not config.dit.uses_clip:
        return None
    if config.image_encoder is None:
        raise ValueError(f"model {config.name!r}: an {config.dit.model_type} model needs image_encoder "
                         f"(an ImageEncoderConfig)")
    return random_image_encoder(config.image_encoder, seed=seed + 3, dtype=dtype, device=device)


def parse_exported_engine(engine) -> tuple[str, Path] | None:
    """("onnx" | "trt", folder) for engine "onnx:DIR" / "trt:DIR", else None."""
    if not isinstance(engine, str) or ":" not in engine:
        return None
    kind, _, folder = engine.partition(":")
    if kind not in ("onnx", "trt") or not folder:
        raise ValueError(f"engine must be executor, reference, onnx:DIR or trt:DIR; got {engine!r}")
    return kind, Path(folder).expanduser()


def check_exported_options(exported, lora_groups, quant: str | None) -> None:
    """Refuse, before the load, what an exported engine cannot take: its weights are in its graphs."""
    if exported is None:
        return
    if any(specs for specs in lora_groups):
        raise ValueError("loras: an exported engine's weights are fixed in its graphs; merge the LoRAs when "
                         "exporting (wan-engine export --lora FILE[:STRENGTH]) and run that export")
    if quant is not None:
        raise ValueError(f"quant={quant!r} needs engine='executor'; an exported engine runs the weights and dtype "
                         f"it was exported with")


def exported_components(exported: tuple[str, Path], dit_config, vae, two_experts: bool = False,
                        dit_folders: dict | None = None):
    """The exported DiT of the folder (itself a DiT export, or holding `dit/`; a two-expert model's
    holds one export per expert, `high_noise/` and `low_noise/`), the low-noise expert's (None for
    one DiT), its exported VAE decoder when the folder holds `vae-decoder/` (None: the static chunk
    decode in torch) and its exported VAE encoder when it holds `vae-encoder/` (None: `vae.encode`).
    dit_folders: the model's DiT checkpoint folders (None or each expert -> folder; empty: seeded
    random weights), whose fingerprints each DiT export must record."""
    from ..export import EXPERT_FOLDERS, Manifest, runner_for
    from ..loading.fingerprint import dit_fingerprint, state_fingerprint

    kind, folder = exported
    dit_folder = folder / "dit" if (folder / "dit").is_dir() else folder
    one_dit = (dit_folder / "manifest.json").is_file()
    if two_experts and one_dit:
        raise ValueError(f"engine: {dit_folder} holds one DiT's export; a two-expert model (Wan2.2 A14B) runs "
                         f"{'/ and '.join(EXPERT_FOLDERS)}/ exports (wan-engine export --component dit of this model "
                         f"writes both)")
    if not two_experts and not one_dit and (dit_folder / EXPERT_FOLDERS[0] / "manifest.json").is_file():
        model = Manifest.load(dit_folder / EXPERT_FOLDERS[0]).model
        raise ValueError(f"engine: {dit_folder} holds a two-expert model's DiT exports ({model}); this model has "
                         f"one DiT")
    if two_experts:
        dit, low_noise = (runner_for(kind, "dit", dit_folder / name, dit_config=dit_config, expert=name)
                          for name in EXPERT_FOLDERS)
    else:
        dit, low_noise = runner_for(kind, "dit", dit_folder, dit_config=dit_config), None
    dit_folders = dit_folders or {}
    for expert, runner in zip(EXPERT_FOLDERS if two_experts else (None,), (dit, low_noise)):
        source = dit_folders.get(expert)
        weights = None if source is None else dit_fingerprint(source)
        note = runner.manifest.check_weights(weights, str(source or "the preset"), f"engine: export {runner.folder}")
        if note is not None:
            warnings.warn(note, stacklevel=3)
    vae_folder = folder / "vae-decoder"
    decoder = runner_for(kind, "vae-decoder", vae_folder, vae=vae) if vae_folder.is_dir() else None
    encoder_folder = folder / "vae-encoder"
    encoder = runner_for(kind, "vae-encoder", encoder_folder, vae=vae) if encoder_folder.is_dir() else None
    vae_weights = state_fingerprint(vae.state_dict()) if decoder or encoder else None
    for runner in (r for r in (decoder, encoder) if r is not None):
        note = runner.manifest.check_weights(vae_weights, "the model's VAE", f"engine: export {runner.folder}")
        if note is not None:
            warnings.warn(note, stacklevel=3)
    return dit, low_noise, decoder, encoder


def parse_model_loras(loras, two_experts: bool):
    """`loras=` for the model: specs for one DiT, {expert: specs} for a two-expert model."""
    if two_experts:
        return parse_expert_loras(loras)
    if isinstance(loras, dict):
        raise ValueError("loras: a mapping of experts is for two-expert models (Wan2.2 A14B); this model has one DiT, "
                         "so pass a list (--lora)")
    return parse_loras(loras)


def check_lora_files(groups) -> None:
    """Refuse a missing LoRA file before the model loads (its contents are checked at the merge)."""
    for spec in (spec for specs in groups for spec in specs):
        if not Path(spec.path).expanduser().is_file():
            raise CheckpointError(f"LoRA file not found: {spec.path}")


def check_shard_weights(shard_weights: bool, engine: str, mesh: ParallelMesh, offload: bool) -> None:
    """Refuse a weight split the launch cannot run, before the load."""
    if not isinstance(shard_weights, bool):
        raise ValueError(f"shard_weights must be True or False, got {shard_weights!r}")
    if not shard_weights:
        return
    if engine != "executor":
        raise ValueError(f"shard_weights needs engine='executor', got engine={engine!r}")
    if mesh.sp_size < 2:
        raise ValueError(f"shard_weights splits the DiT over the ranks of a sequence-parallel group, and this layout "
                         f"({mesh.config.describe()}) has none; launch with --ulysses or --ring > 1")
    if offload:
        raise ValueError("shard_weights and offload are two answers to the same memory problem; choose one "
                         "(offload keeps the whole DiT on the CPU between requests, shard_weights 1/sp of it on the GPU)")


def check_quant(quant: str | None, engine: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a weight quantization the engine or the hardware cannot run, before the load."""
    if quant is None:
        return
    if engine != "executor":
        raise ValueError(f"quant={quant!r} needs engine='executor' (the reference runs the official precision)")
    check_fp8_support(quant, device, dtype)


def model_calibration(folder: Path | None, name: str) -> Calibration | None:
    """The step-cache calibration a model brings: its folder's `cache_calibration.json`, else the
    published one of its preset name (t2v-1.3B, t2v-14B), else None."""
    if folder is not None and (folder / CALIBRATION_FILE).is_file():
        return Calibration.load(folder / CALIBRATION_FILE)
    return published(name.split(" ")[0])


def text_config(text) -> T5Config:
    return infer_t5_config(text.model.state_dict(), text_len=text.text_len)
