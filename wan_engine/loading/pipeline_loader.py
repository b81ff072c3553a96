"""Assemble a pipeline's components from a model directory or from a preset's seeded weights."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from ..configs import PRESETS, ModelConfig, get_preset
from ..device import resolve_device, resolve_dtype
from ..engine_config import ENGINES, EngineConfig
from .checkpoint import load_into
from .components import load_dit, load_text_encoder, load_vae
from .errors import CheckpointError
from .layout import detect_layout
from .random_init import random_state_dict


def preset_for(dit_dim: int, model_type: str) -> ModelConfig | None:
    """The published preset whose DiT matches, for sampling defaults and display names."""
    for preset in PRESETS.values():
        if preset.dit.dim == dit_dim and preset.dit.model_type == model_type:
            return preset
    return None


def random_components(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Reference DiT, VAE and text encoder with seeded random weights (the embedded presets)."""
    from ..reference.dit import WanDiT
    from ..reference.text_encoder import TextEncoder
    from ..reference.vae import WanVAE

    with torch.device("meta"):
        dit = WanDiT(config.dit, compute_dtype=dtype)
        vae = WanVAE(config.vae)
    dit = load_into(dit, random_state_dict(dit, seed), dtype=dtype, device=device, source=f"preset {config.name}")
    vae = load_into(vae, random_state_dict(vae, seed + 1), dtype=torch.float32, device=device,
                    source=f"preset {config.name}")
    text = TextEncoder.from_config(config.t5, seed=seed + 2, dtype=dtype, device=device)
    return text, dit.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def load_pipeline_components(path_or_preset: str, device=None, dtype=None, *, t5_cpu: bool = False,
                             offload: bool = False, engine: str = "executor", attention: str = "auto",
                             ops: str = "auto", cfg_batch: bool = True, compile: bool = False,
                             seed: int = 0) -> dict:
    """Keyword arguments for `WanPipeline(...)`.

    engine "executor" (default) wraps the loaded reference DiT's weights in the optimized
    executor with the given attention/ops backends, CFG batching and compile options; engine
    "reference" keeps the eager reference (which ignores those options).
    """
    from ..reference.text_encoder import TextEncoder

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    # Validate the engine options before the (possibly long) load.
    engine_config = EngineConfig(engine=engine, attention=attention, ops=ops, cfg_batch=cfg_batch,
                                 compile=compile, dtype=dtype)
    text_device = torch.device("cpu") if t5_cpu else device
    # The text encoder's first stop is the CPU when it will be offloaded anyway.
    text_home = torch.device("cpu") if (t5_cpu or offload) else device
    # bf16 on the CPU is slow in most torch builds, but the 5.7B-parameter umT5 needs it for memory.
    text_dtype = dtype if text_device.type == "cuda" else (torch.bfloat16 if t5_cpu else dtype)

    path = Path(str(path_or_preset)).expanduser()
    if path.is_dir():
        layout = detect_layout(path)
        dit = load_dit(layout.root, dtype=dtype, device=device)
        preset = preset_for(dit.config.dim, dit.config.model_type)
        config = ModelConfig(
            name=f"{preset.name if preset else 'custom'} ({path.name})",
            dit=dit.config,
            sample=preset.sample if preset else get_preset("t2v-14B").sample,
        )
        if layout.vae is None:
            raise CheckpointError(f"{path}: no VAE in this {layout.kind} directory")
        vae = load_vae(layout.vae, device=device)
        text = load_text_encoder(layout.root, dtype=text_dtype, device=text_home, text_len=dit.config.text_len)
        config = dataclasses.replace(config, vae=vae.config, t5=text_config(text))
    elif str(path_or_preset) in PRESETS:
        config = get_preset(str(path_or_preset))
        if config.name != "tiny":
            warnings.warn(f"preset {config.name!r} has no embedded weights: using seeded random weights "
                          f"(for benchmarks; the video will be noise)", stacklevel=2)
        text, dit, vae = random_components(config, device, dtype, seed)
        text = TextEncoder(text.model, text.tokenizer, device=text_home, dtype=text_dtype)
    else:
        raise ValueError(f"model {path_or_preset!r} is neither an existing model directory nor a preset "
                         f"({', '.join(sorted(PRESETS))})")
    if engine == "executor":
        from ..executor import build_executor

        dit = build_executor(dit, engine_config, device)
    return dict(config=config, text_encoder=text, dit=dit, vae=vae, device=device, dtype=dtype,
                text_device=text_device, offload=offload)


def text_config(text) -> "T5Config":
    from .t5_format import infer_t5_config

    return infer_t5_config(text.model.state_dict(), text_len=text.text_len)
