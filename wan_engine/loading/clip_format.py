"""The image encoder's weights (CLIP ViT-H/14 visual tower): both file layouts, key maps, config.

Official: `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, the flat state dict of Wan's
`XLMRobertaCLIP` (`wan/modules/clip.py`):

    visual.patch_embedding.weight                [dim, 3, patch, patch]   (no bias)
    visual.cls_embedding                         [1, 1, dim]
    visual.pos_embedding                         [1, tokens, dim]
    visual.pre_norm.{weight,bias}                [dim]
    visual.transformer.{i}.norm1 / .norm2        LayerNorm
    visual.transformer.{i}.attn.to_qkv           Linear(dim, 3*dim), rows [q | k | v]
    visual.transformer.{i}.attn.proj             Linear(dim, dim)
    visual.transformer.{i}.mlp.0 / .mlp.2        Linear(dim, mlp_dim) / Linear(mlp_dim, dim)
    visual.post_norm, visual.head, textual.*, log_scale

diffusers: an `image_encoder/` folder holding a transformers `CLIPVisionModel(WithProjection)`
(`model*.safetensors` + `config.json`), names under `vision_model.` (transformers >= 5 saves them
without that prefix): `embeddings.{patch_embedding.weight, class_embedding [dim],
position_embedding.weight [tokens, dim]}`, `pre_layrnorm`, `encoder.layers.{i}.{layer_norm1,
self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`, `post_layernorm`.

Wan reads the penultimate block's output, so the last block, the post-norm, the head and the text
tower are left out and reported as ignored (`ImageEncoderWeights.ignored`); any other name is an
error that names it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configs import ImageEncoderConfig
from .checkpoint import _summarize, read_sharded, read_weights
from .errors import CheckpointError
from .layout import ORIGINAL_CLIP, _read_json, detect_layout

OFFICIAL_PREFIX = "visual."
TRANSFORMERS_PREFIX = "vision_model."
DIFFUSERS_STEM = "model"  # image_encoder/model*.safetensors (transformers' save_pretrained)
# ViT-H/14 has 16 heads of 80; the weights do not record the head count.
VIT_H_HEAD_DIM = 80

LAST_BLOCK = "the last block (Wan reads the penultimate block's output, use_31_block)"
POST_NORM = "the post-norm (applied after the last block only)"
HEAD = "the projection head (CLIP's joint embedding; Wan uses the token features)"
TEXT = "the text tower (Wan conditions on the image only)"
BUFFER = "position_ids (an index buffer, not a weight)"

_LEAVES = ("weight", "bias")
_TOP = ("patch_embedding.weight", "cls_embedding", "pos_embedding", "pre_norm.weight", "pre_norm.bias")
_BLOCK_MODULES = ("norm1", "attn.to_qkv", "attn.proj", "norm2", "mlp.0", "mlp.2")
_BLOCK = {f"{m}.{leaf}" for m in _BLOCK_MODULES for leaf in _LEAVES}
# transformers block name -> module block name, for the one-to-one renames.
_HF_BLOCK_RENAMES = {f"{hf}.{leaf}": f"{ours}.{leaf}" for hf, ours in (
    ("layer_norm1", "norm1"), ("self_attn.out_proj", "attn.proj"), ("layer_norm2", "norm2"),
    ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")) for leaf in _LEAVES}
# Concatenated in this order into to_qkv: the official splits its output as view(b, s, 3, heads, d).
_HF_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_HF_QKV_NAMES = {f"{proj}.{leaf}" for proj in _HF_QKV for leaf in _LEAVES}
_OFFICIAL_BLOCK_KEY = re.compile(r"visual\.transformer\.(\d+)\.(.+)")
_HF_BLOCK_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)")


@dataclass
class ImageEncoderWeights:
    """A file's tensors under `WanImageEncoder`'s names, and what was left out of them."""

    state_dict: dict[str, torch.Tensor]
    file_layers: int  # blocks in the file (the module holds file_layers - 1)
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> the file's keys

    def ignored_summary(self) -> str:
        total = sum(map(len, self.ignored.values()))
        parts = [f"{len(keys)} of {reason}" for reason, keys in self.ignored.items()]
        return f"ignored {total} tensors: " + "; ".join(parts) if total else "ignored no tensors"


def is_official_clip(sd) -> bool:
    return OFFICIAL_PREFIX + "patch_embedding.weight" in sd


def _strip_transformers_prefix(sd) -> dict:
    """transformers names without `vision_model.`; a file holds them with or without it."""
    return {k[len(TRANSFORMERS_PREFIX):] if k.startswith(TRANSFORMERS_PREFIX) else k: v for k, v in sd.items()}


def _layer_count(indices: set[int], source) -> int:
    if indices != set(range(len(indices))) or len(indices) < 2:
        raise CheckpointError(f"{source}: CLIP blocks must be numbered 0..N-1 with N >= 2, found {sorted(indices)}")
    return len(indices)


def _unknown(keys: list[str], source):
    if keys:
        raise CheckpointError(f"{source}: unknown tensor names for a CLIP vision tower: {_summarize(sorted(keys))}")


def _from_official(sd, source) -> ImageEncoderWeights:
    layers = _layer_count({int(m.group(1)) for m in map(_OFFICIAL_BLOCK_KEY.fullmatch, sd) if m}, source)
    out, ignored, unknown = {}, {}, []
    for key, tensor in sd.items():
        name = key[len(OFFICIAL_PREFIX):]
        block = _OFFICIAL_BLOCK_KEY.fullmatch(key)
        if key.startswith("textual.") or key == "log_scale":
            ignored.setdefault(TEXT, []).append(key)
        elif not key.startswith(OFFICIAL_PREFIX):
            unknown.append(key)
        elif block and block.group(2) in _BLOCK:
            if int(block.group(1)) == layers - 1:
                ignored.setdefault(LAST_BLOCK, []).append(key)
            else:
                out[name] = tensor
        elif name in _TOP:
            out[name] = tensor
        elif name in ("post_norm.weight", "post_norm.bias"):
            ignored.setdefault(POST_NORM, []).append(key)
        elif name == "head" or name.startswith("head."):
            ignored.setdefault(HEAD, []).append(key)
        else:
            unknown.append(key)
    _unknown(unknown, source)
    return ImageEncoderWeights(out, layers, ignored)


def _from_transformers(sd, source) -> ImageEncoderWeights:
    layers = _layer_count({int(m.group(1)) for m in map(_HF_BLOCK_KEY.fullmatch, _strip_transformers_prefix(sd)) if m},
                          source)
    top = {"embeddings.patch_embedding.weight": "patch_embedding.weight",
           "pre_layrnorm.weight": "pre_norm.weight", "pre_layrnorm.bias": "pre_norm.bias"}
    out, ignored, unknown, qkv = {}, {}, [], {}
    for key, tensor in sd.items():
        name = key.removeprefix(TRANSFORMERS_PREFIX)
        block = _HF_BLOCK_KEY.fullmatch(name)
        if name.startswith("text_model.") or name in ("text_projection.weight", "logit_scale"):
            ignored.setdefault(TEXT, []).append(key)
        elif name == "visual_projection.weight":
            ignored.setdefault(HEAD, []).append(key)
        elif name in ("post_layernorm.weight", "post_layernorm.bias"):
            ignored.setdefault(POST_NORM, []).append(key)
        elif name == "embeddings.position_ids":
            ignored.setdefault(BUFFER, []).append(key)
        elif name in top:
            out[top[name]] = tensor
        elif name == "embeddings.class_embedding":
            out["cls_embedding"] = tensor.reshape(1, 1, -1)  # [dim] -> the official [1, 1, dim]
        elif name == "embeddings.position_embedding.weight":
            out["pos_embedding"] = tensor.unsqueeze(0)  # [tokens, dim] -> the official [1, tokens, dim]
        elif block and (block.group(2) in _HF_BLOCK_RENAMES or block.group(2) in _HF_QKV_NAMES):
            i, suffix = int(block.group(1)), block.group(2)
            if i == layers - 1:
                ignored.setdefault(LAST_BLOCK, []).append(key)
            elif suffix in _HF_BLOCK_RENAMES:
                out[f"transformer.{i}.{_HF_BLOCK_RENAMES[suffix]}"] = tensor
            else:
                qkv[(i, suffix)] = tensor
        else:
            unknown.append(key)
    _unknown(unknown, source)
    for i in range(layers - 1):
        for leaf in _LEAVES:
            parts = [f"{proj}.{leaf}" for proj in _HF_QKV]
            absent = [f"encoder.layers.{i}.{p}" for p in parts if (i, p) not in qkv]
            if absent:
                raise CheckpointError(f"{source}: missing tensors {absent} (needed for transformer.{i}.attn.to_qkv)")
            out[f"transformer.{i}.attn.to_qkv.{leaf}"] = torch.cat([qkv[(i, p)] for p in parts])
    return ImageEncoderWeights(out, layers, ignored)


def image_encoder_weights(sd, source="image encoder weights") -> ImageEncoderWeights:
    """A file's state dict (either layout) -> the tensors `WanImageEncoder` holds, under its names."""
    if is_official_clip(sd):
        return _from_official(sd, source)
    if any(k.startswith(("embeddings.patch_embedding.", "encoder.layers.")) for k in _strip_transformers_prefix(sd)):
        return _from_transformers(sd, source)
    raise CheckpointError(f"{source}: not a CLIP vision checkpoint (no {OFFICIAL_PREFIX}patch_embedding.weight "
                          f"nor {TRANSFORMERS_PREFIX}embeddings.patch_embedding.weight)")


def _shape(sd, key: str, source) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{source}: lacks {key!r}; is this a CLIP vision tower?")
    return tuple(sd[key].shape)


def image_encoder_config_of(sd, config_json: dict | None = None, source="image encoder weights") -> ImageEncoderConfig:
    """The `ImageEncoderConfig` a file's state dict (either layout; meta tensors are fine) implies.

    dim, patch, mlp_dim, the block count of the file and image_size (from the position-table rows)
    come from the shapes. The head count is not in the weights: transformers' config.json
    `num_attention_heads` when given, else dim // 80 (ViT-H/14's head_dim). eps is config.json's
    `layer_norm_eps`, else 1e-5 (the official). config.json values that contradict the weights raise.
    """
    if is_official_clip(sd):
        patch = _shape(sd, "visual.patch_embedding.weight", source)
        rows = _shape(sd, "visual.pos_embedding", source)[1]
        mlp_dim = _shape(sd, "visual.transformer.0.mlp.0.weight", source)[0]
        blocks = {int(m.group(1)) for m in map(_OFFICIAL_BLOCK_KEY.fullmatch, sd) if m}
    else:
        sd = _strip_transformers_prefix(sd)
        patch = _shape(sd, "embeddings.patch_embedding.weight", source)
        rows = _shape(sd, "embeddings.position_embedding.weight", source)[0]
        mlp_dim = _shape(sd, "encoder.layers.0.mlp.fc1.weight", source)[0]
        blocks = {int(m.group(1)) for m in map(_HF_BLOCK_KEY.fullmatch, sd) if m}
    dim, channels, patch_h, patch_w = patch
    grid = math.isqrt(max(rows - 1, 0))
    if channels != 3 or patch_h != patch_w or grid * grid != rows - 1 or grid == 0:
        raise CheckpointError(f"{source}: patch embedding {patch} with {rows} position rows is not a square-image "
                              f"ViT (expected [dim, 3, p, p] and 1 + grid**2 rows)")
    inferred = {"dim": dim, "patch_size": patch_h, "image_size": grid * patch_h, "mlp_dim": mlp_dim,
                "num_layers": _layer_count(blocks, source)}

    config_json = dict(config_json or {})
    config_json = dict(config_json.get("vision_config") or config_json)  # a full CLIPModel config nests it
    aliases = {"dim": "hidden_size", "patch_size": "patch_size", "image_size": "image_size",
               "mlp_dim": "intermediate_size", "num_layers": "num_hidden_layers"}
    for ours, theirs in aliases.items():
        if config_json.get(theirs) is not None and config_json[theirs] != inferred[ours]:
            raise CheckpointError(f"{source}: config.json {theirs} = {config_json[theirs]!r} contradicts the "
                                  f"weights ({ours} = {inferred[ours]})")
    act = config_json.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{source}: config.json hidden_act = {act!r}; Wan's CLIP tower uses exact 'gelu'")
    heads = config_json.get("num_attention_heads")
    if heads is None:
        if dim % VIT_H_HEAD_DIM:
            raise CheckpointError(f"{source}: cannot infer the head count of dim {dim} (not a multiple of "
                                  f"ViT-H's head_dim {VIT_H_HEAD_DIM}); pass a config")
        heads = dim // VIT_H_HEAD_DIM
    try:
        return ImageEncoderConfig(num_heads=heads, eps=config_json.get("layer_norm_eps", 1e-5), **inferred)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def read_image_encoder_state_dict(path: str | Path) -> tuple[dict, dict]:
    """(the file's tensors as stored, config.json or {}) of the image encoder.

    `path`: the official `.pth` (or any .pth/.safetensors file), a diffusers `image_encoder/`
    folder (`model*.safetensors`, sharded with an index or not), or a model root in either layout.
    The .pth is read with `torch.load(weights_only=True)`: nothing is unpickled.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return read_weights(path), {}
    if not path.is_dir():
        raise CheckpointError(f"image encoder checkpoint not found: {path}")
    if (path / ORIGINAL_CLIP).is_file():
        return read_weights(path / ORIGINAL_CLIP), {}
    folder = path
    if not _has_weights(path):
        try:
            layout = detect_layout(path)
        except CheckpointError:
            layout = None  # neither a model root nor a weights folder: read_sharded names what is missing
        if layout is not None:
            if layout.image_encoder is None:
                raise CheckpointError(f"{path}: no image encoder in this {layout.kind} layout "
                                      f"(expected {ORIGINAL_CLIP} or an image_encoder/ folder)")
            if layout.image_encoder.is_file():
                return read_weights(layout.image_encoder), {}
            folder = layout.image_encoder
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    return read_sharded(folder, DIFFUSERS_STEM), config


def _has_weights(folder: Path) -> bool:
    return any(folder.glob(f"{DIFFUSERS_STEM}*.safetensors")) or (
        folder / f"{DIFFUSERS_STEM}.safetensors.index.json").is_file()
