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
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

DIT_STEM = "diffusion_pytorch_model"
ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = Path("google") / "umt5-xxl"
ORIGINAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


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

    def describe(self) -> str:
        rows = [("layout", self.kind), ("root", self.root), ("dit", self.dit_dir), ("vae", self.vae),
                ("text encoder", self.text_encoder), ("tokenizer", self.tokenizer),
                ("image encoder", self.image_encoder)]
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


def detect_layout(path: str | Path) -> ModelLayout:
    """The layout of a model directory; a clear error if it is in neither layout."""
    root = Path(path).expanduser()
    if root.is_file():
        raise CheckpointError(f"{root} is a file; pass the model directory that holds the checkpoint files")
    if not root.is_dir():
        raise CheckpointError(f"model directory not found: {root}")
    transformer = root / "transformer"
    if transformer.is_dir() and _has_dit_weights(transformer):
        config = _read_json(transformer / "config.json") if (transformer / "config.json").is_file() else {}
        return ModelLayout(
            kind="diffusers",
            root=root,
            dit_dir=transformer,
            dit_config=config,
            vae=_existing(root / "vae"),
            text_encoder=_existing(root / "text_encoder"),
            tokenizer=_existing(root / "tokenizer"),
            image_encoder=_existing(root / "image_encoder"),
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
            vae=_existing(root / ORIGINAL_VAE),
            text_encoder=_existing(root / ORIGINAL_T5),
            tokenizer=_existing(root / ORIGINAL_TOKENIZER),
            image_encoder=_existing(root / ORIGINAL_CLIP),
        )
    raise CheckpointError(
        f"{root} is in neither known layout: expected either the original Wan2.1 files "
        f"({DIT_STEM}*.safetensors + config.json, {ORIGINAL_VAE}, {ORIGINAL_T5}, {ORIGINAL_TOKENIZER}/) "
        f"or the diffusers folders (transformer/, vae/, text_encoder/, tokenizer/, scheduler/)"
    )
