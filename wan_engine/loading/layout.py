"""Recognising the two on-disk layouts users have: the original Wan2.1 release and diffusers.

Original (e.g. Wan2.1-T2V-1.3B/):         diffusers (e.g. Wan2.1-T2V-1.3B-Diffusers/):
  config.json                               model_index.json
  diffusion_pytorch_model*.safetensors      transformer/{config.json, diffusion_pytorch_model*.safetensors}
  [diffusion_pytorch_model.safetensors.index.json]
  Wan2.1_VAE.pth                            vae/{config.json, diffusion_pytorch_model.safetensors}
  models_t5_umt5-xxl-enc-bf16.pth           text_encoder/{config.json, model*.safetensors}
  google/umt5-xxl/  (tokenizer)             tokenizer/
                                            scheduler/scheduler_config.json
I2V / FLF2V models add the CLIP image encoder:
  models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   image_encoder/{config.json, model*.safetensors}
Wan2.2 A14B models hold two DiTs (the high- and the low-noise expert) in place of one:
  high_noise_model/, low_noise_model/       transformer/ (high noise), transformer_2/ (low noise),
    each {config.json, diffusion_...}         and model_index.json's "boundary_ratio"
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

DIT_STEM = "diffusion_pytorch_model"
ORIGINAL_VAE = "Wan2.1_VAE.pth"
WAN22_VAE = "Wan2.2_VAE.pth"  # TI2V-5B's VAE (48 latent channels); the A14B models use Wan2.1's
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = Path("google") / "umt5-xxl"
ORIGINAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
ORIGINAL_EXPERTS = ("high_noise_model", "low_noise_model")  # Wan2.2 A14B
DIFFUSERS_EXPERTS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class ModelLayout:
    """Where each component of one model lives; `None` where the directory lacks it."""

    kind: str  # "original" | "diffusers"
    root: Path
    dit_dir: Path
    dit_config: dict
    vae: Path | None  # a file (original) or a directory (diffusers)
    text_encoder: Path | None
    tokenizer: Path | None
    image_encoder: Path | None = None  # I2V / FLF2V only: a file (original) or a directory (diffusers)
    # Wan2.2 A14B: the low-noise expert's folder (`dit_dir` then holds the high-noise one), and the
    # boundary a diffusers folder records (None: the original layout, whose boundary is in code).
    low_noise_dit_dir: Path | None = None
    boundary: float | None = None

    @property
    def has_experts(self) -> bool:
        return self.low_noise_dit_dir is not None

    def describe(self) -> str:
        dit = [("dit", self.dit_dir)] if not self.has_experts else [
            ("dit (high)", self.dit_dir), ("dit (low)", self.low_noise_dit_dir)]
        rows = [("layout", self.kind), ("root", self.root), *dit, ("vae", self.vae),
                ("text encoder", self.text_encoder), ("tokenizer", self.tokenizer),
                ("image encoder", self.image_encoder)]
        if self.boundary is not None:
            rows.append(("boundary", self.boundary))
        return "\n".join(f"{k:>13}: {v if v is not None else '(absent)'}" for k, v in rows)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _has_dit_weights(directory: Path) -> bool:
    return any(directory.glob(f"{DIT_STEM}*.safetensors")) or (
        directory / f"{DIT_STEM}.safetensors.index.json"
    ).is_file()


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def original_vae(root: Path) -> Path | None:
    """The VAE file of an original-layout folder: Wan2.1's, else Wan2.2's (TI2V-5B)."""
    return _existing(root / ORIGINAL_VAE) or _existing(root / WAN22_VAE)


def detect_layout(path: str | Path) -> ModelLayout:
    """The layout of a model directory; a clear error if it is in neither layout."""
    root = Path(path).expanduser()
    if root.is_file():
        raise CheckpointError(f"{root} is a file; pass the model directory that holds the checkpoint files")
    if not root.is_dir():
        raise CheckpointError(f"model directory not found: {root}")
    transformer = root / "transformer"
    if transformer.is_dir() and _has_dit_weights(transformer):
        low = _expert_dir(root, DIFFUSERS_EXPERTS)
        return ModelLayout(
            kind="diffusers",
            root=root,
            dit_dir=transformer,
            dit_config=_dit_config(transformer),
            vae=_existing(root / "vae"),
            text_encoder=_existing(root / "text_encoder"),
            tokenizer=_existing(root / "tokenizer"),
            image_encoder=_existing(root / "image_encoder"),
            low_noise_dit_dir=low,
            boundary=None if low is None else _boundary_ratio(root),
        )
    low = _expert_dir(root, ORIGINAL_EXPERTS)
    if low is not None:
        high = root / ORIGINAL_EXPERTS[0]
        return ModelLayout(
            kind="original",
            root=root,
            dit_dir=high,
            dit_config=_dit_config(high),
            vae=original_vae(root),
            text_encoder=_existing(root / ORIGINAL_T5),
            tokenizer=_existing(root / ORIGINAL_TOKENIZER),
            image_encoder=_existing(root / ORIGINAL_CLIP),
            low_noise_dit_dir=low,
        )
    if _has_dit_weights(root):
        config = _read_json(root / "config.json") if (root / "config.json").is_file() else {}
        if config.get("_class_name", "WanModel") == "WanTransformer3DModel":
            # A diffusers `transformer/` folder handed over on its own.
            return ModelLayout("diffusers", root, root, config, None, None, None)
        return ModelLayout(
            kind="original",
            root=root,
            dit_dir=root,
            dit_config=config,
            vae=original_vae(root),
            text_encoder=_existing(root / ORIGINAL_T5),
            tokenizer=_existing(root / ORIGINAL_TOKENIZER),
            image_encoder=_existing(root / ORIGINAL_CLIP),
        )
    raise CheckpointError(
        f"{root} is in neither known layout: expected either the original Wan2.1 files "
        f"(or Wan2.2 A14B's {ORIGINAL_EXPERTS[0]}/ and {ORIGINAL_EXPERTS[1]}/ DiT folders) "
        f"({DIT_STEM}*.safetensors + config.json, {ORIGINAL_VAE}, {ORIGINAL_T5}, {ORIGINAL_TOKENIZER}/) "
        f"or the diffusers folders (transformer/, vae/, text_encoder/, tokenizer/, scheduler/)"
    )


def _dit_config(directory: Path) -> dict:
    return _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}


def _expert_dir(root: Path, names: tuple[str, str]) -> Path | None:
    """The low-noise expert's folder of a two-expert model (None: one DiT). Half a pair is an error:
    the model cannot run with one expert."""
    high, low = (root / n for n in names)
    present = [d.is_dir() and _has_dit_weights(d) for d in (high, low)]
    if present == [True, True]:
        return low
    if names == ORIGINAL_EXPERTS and any(present):
        have, lack = (high, low) if present[0] else (low, high)
        raise CheckpointError(f"{root}: {have.name}/ holds DiT weights but {lack.name}/ does not; a Wan2.2 "
                              f"A14B model needs both experts")
    if names == DIFFUSERS_EXPERTS and low.is_dir():
        raise CheckpointError(f"{low}: no DiT weights ({DIT_STEM}*.safetensors); the low-noise expert is missing")
    return None


def _boundary_ratio(root: Path) -> float | None:
    """model_index.json's `boundary_ratio` (diffusers' Wan2.2 A14B pipelines); None when absent."""
    index = root / "model_index.json"
    ratio = _read_json(index).get("boundary_ratio") if index.is_file() else None
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise CheckpointError(f"{index}: boundary_ratio must be a number in (0, 1), got {ratio!r}")
    return None if ratio is None else float(ratio)
