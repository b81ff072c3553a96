"""Wan2.1 DiT checkpoints: official <-> diffusers key names, and the config the weights imply.

The official `WanModel` and diffusers' `WanTransformer3DModel` store the same tensors with the same
shapes under different names; only the names change here. Note the crossed norms: official
`norm3` (the affine cross-attention norm) is diffusers' `norm2`. The maps are strict: a key that
matches no rule raises `KeyError`, so a checkpoint of another architecture never loads half-way.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

from wan_engine.configs import DiTConfig

# (official module, diffusers module) for modules holding `weight` and `bias`.
_TOP_MODULES = [
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
]
_BLOCK_MODULES = [
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("norm3", "norm2"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
]
# (official tensor, diffusers tensor) for single tensors (RMSNorm gains, tables).
_TOP_TENSORS = [
    ("head.modulation", "scale_shift_table"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
]
_BLOCK_TENSORS = [
    ("self_attn.norm_q.weight", "attn1.norm_q.weight"),
    ("self_attn.norm_k.weight", "attn1.norm_k.weight"),
    ("cross_attn.norm_q.weight", "attn2.norm_q.weight"),
    ("cross_attn.norm_k.weight", "attn2.norm_k.weight"),
    ("cross_attn.norm_k_img.weight", "attn2.norm_added_k.weight"),
    ("modulation", "scale_shift_table"),
]
# Present in some diffusers I2V exports, unused by the model (diffusers ignores it on load too).
_DIFFUSERS_UNUSED = re.compile(r"blocks\.\d+\.attn2\.norm_added_q\.weight")

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")

# Published head counts by model width (the official checkpoints' config.json `num_heads`).
PUBLISHED_NUM_HEADS = {1536: 12, 5120: 40}


def _tensor_pairs(modules, tensors) -> list[tuple[str, str]]:
    pairs = [(f"{o}.{leaf}", f"{d}.{leaf}") for o, d in modules for leaf in ("weight", "bias")]
    return pairs + list(tensors)


_OFFICIAL_TO_DIFFUSERS_TOP = dict(_tensor_pairs(_TOP_MODULES, _TOP_TENSORS))
_OFFICIAL_TO_DIFFUSERS_BLOCK = dict(_tensor_pairs(_BLOCK_MODULES, _BLOCK_TENSORS))
_DIFFUSERS_TO_OFFICIAL_TOP = {d: o for o, d in _OFFICIAL_TO_DIFFUSERS_TOP.items()}
_DIFFUSERS_TO_OFFICIAL_BLOCK = {d: o for o, d in _OFFICIAL_TO_DIFFUSERS_BLOCK.items()}


def _rename(key: str, top: dict[str, str], block: dict[str, str], source: str) -> str:
    match = _BLOCK_KEY.fullmatch(key)
    if match and match.group(2) in block:
        return f"blocks.{match.group(1)}.{block[match.group(2)]}"
    if key in top:
        return top[key]
    raise KeyError(f"{source} DiT key {key!r} matches no known Wan2.1 parameter")


def official_to_diffusers_dit(sd: Mapping) -> dict:
    """Rename an official `WanModel` state dict to diffusers `WanTransformer3DModel` names (tensors shared)."""
    return {_rename(k, _OFFICIAL_TO_DIFFUSERS_TOP, _OFFICIAL_TO_DIFFUSERS_BLOCK, "official"): v
            for k, v in sd.items()}


def diffusers_to_official_dit(sd: Mapping) -> dict:
    """Rename a diffusers `WanTransformer3DModel` state dict to official `WanModel` names (tensors shared)."""
    return {_rename(k, _DIFFUSERS_TO_OFFICIAL_TOP, _DIFFUSERS_TO_OFFICIAL_BLOCK, "diffusers"): v
            for k, v in sd.items() if not _DIFFUSERS_UNUSED.fullmatch(k)}


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise KeyError(f"DiT state dict lacks {key!r}; is this a Wan2.1 DiT checkpoint?")
    return tuple(sd[key].shape)


def _looks_like_diffusers(sd: Mapping) -> bool:
    return "proj_out.weight" in sd or any(k.startswith("condition_embedder.") for k in sd)


def _num_layers(sd: Mapping) -> int:
    indices = {int(m.group(1)) for m in map(_BLOCK_KEY.fullmatch, sd) if m}
    if indices != set(range(len(indices))):
        raise ValueError(f"DiT block indices must be 0..N-1, got {sorted(indices)}")
    return len(indices)


def _config_value(config_json: Mapping, *names):
    for name in names:
        if name in config_json and config_json[name] is not None:
            return name, config_json[name]
    return None, None


def infer_dit_config(sd: Mapping, config_json: dict | None = None) -> DiTConfig:
    """The `DiTConfig` an official (or diffusers) DiT state dict implies.

    Every dimension comes from tensor shapes; `num_heads` (invisible in the weights) comes from
    config_json (`num_heads` official, `num_attention_heads` diffusers), else the published value
    for the width (1536 -> 12, 5120 -> 40), else dim // 128 (head_dim 128). `text_len` and `eps`
    come from config_json when given. A config_json value that contradicts the weights raises
    ValueError naming the key.
    """
    if _looks_like_diffusers(sd):
        sd = diffusers_to_official_dit(sd)
    config_json = dict(config_json or {})
    dim, in_dim, *patch = _shape(sd, "patch_embedding.weight")
    patch_size = tuple(patch)
    head_out = _shape(sd, "head.head.weight")[0]
    if head_out % math.prod(patch_size):
        raise ValueError(f"head.head.weight rows ({head_out}) not divisible by the patch volume {patch_size}")
    model_type = "flf2v" if "img_emb.emb_pos" in sd else "i2v" if "img_emb.proj.1.weight" in sd else "t2v"
    out_dim = head_out // math.prod(patch_size)
    # Conditioning channels without an image projection: Wan2.2's I2V-A14B (y alone, no CLIP).
    latents_only_i2v = model_type == "t2v" and in_dim > out_dim
    if latents_only_i2v:
        model_type = "i2v"
    inferred = {
        "model_type": model_type,
        "patch_size": patch_size,
        "dim": dim,
        "in_dim": in_dim,
        "out_dim": out_dim,
        "text_dim": _shape(sd, "text_embedding.0.weight")[1],
        "freq_dim": _shape(sd, "time_embedding.0.weight")[1],
        "ffn_dim": _shape(sd, "blocks.0.ffn.0.weight")[0],
        "num_layers": _num_layers(sd),
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in sd,
        "cross_attn_norm": "blocks.0.norm3.weight" in sd,
    }
    if latents_only_i2v:
        inferred["clip"] = False
    elif model_type != "t2v":
        # The CLIP width from the projection's input LayerNorm; the rows per image from flf2v's
        # position table (an i2v checkpoint does not fix them: the official 257 of ViT-H/14).
        inferred["image_dim"] = _shape(sd, "img_emb.proj.0.weight")[0]
        if model_type == "flf2v":
            rows = _shape(sd, "img_emb.emb_pos")
            if len(rows) != 3 or rows[1] % 2 or rows[2] != inferred["image_dim"]:
                raise ValueError(f"img_emb.emb_pos must be [1, 2 x tokens per image, {inferred['image_dim']}], "
                                 f"got {rows}")
            inferred["image_tokens"] = rows[1] // 2

    # Official config.json names first, then diffusers' names for the same quantity.
    aliases = {
        "dim": ("dim",), "in_dim": ("in_dim", "in_channels"), "out_dim": ("out_dim", "out_channels"),
        "text_dim": ("text_dim",), "freq_dim": ("freq_dim",), "ffn_dim": ("ffn_dim",),
        "num_layers": ("num_layers",), "model_type": ("model_type",), "patch_size": ("patch_size",),
        "image_dim": ("image_dim",),
    }
    for field, names in aliases.items():
        name, value = _config_value(config_json, *names)
        if name is None or field not in inferred:
            continue
        value = tuple(value) if field == "patch_size" else value
        if value != inferred[field]:
            raise ValueError(f"config_json[{name!r}] = {value!r} contradicts the weights ({field} = {inferred[field]!r})")

    name, heads = _config_value(config_json, "num_heads", "num_attention_heads")
    if heads is None:
        heads = PUBLISHED_NUM_HEADS.get(dim, dim // 128 if dim % 128 == 0 else None)
        if heads is None:
            raise ValueError(f"cannot infer num_heads for dim {dim}: pass config_json with 'num_heads'")
    elif dim % heads:
        raise ValueError(f"config_json[{name!r}] = {heads} does not divide the weights' dim {dim}")
    _, head_dim = _config_value(config_json, "attention_head_dim")
    if head_dim is not None and head_dim * heads != dim:
        raise ValueError(f"config_json['attention_head_dim'] = {head_dim} x {heads} heads != the weights' dim {dim}")

    extras = {k: config_json[k] for k in ("text_len", "eps") if config_json.get(k) is not None}
    return DiTConfig(num_heads=heads, **inferred, **extras)
