"""umT5 encoder weights: the official Wan key layout, the Hugging Face layout, and config inference.

The official `models_t5_umt5-xxl-enc-bf16.pth` is a plain state dict of Wan's own `T5Encoder`
(`wan/modules/t5.py`, built with `shared_pos=False`, so every block owns its relative bias):

    token_embedding.weight                          [vocab, d_model]
    blocks.{i}.norm1.weight                         [d_model]
    blocks.{i}.attn.{q,k,v}.weight                  [heads*d_kv, d_model]
    blocks.{i}.attn.o.weight                        [d_model, heads*d_kv]
    blocks.{i}.pos_embedding.embedding.weight       [num_buckets, heads]
    blocks.{i}.norm2.weight                         [d_model]
    blocks.{i}.ffn.gate.0.weight                    [d_ff, d_model]   (the GELU branch)
    blocks.{i}.ffn.fc1.weight                       [d_ff, d_model]   (the linear branch)
    blocks.{i}.ffn.fc2.weight                       [d_model, d_ff]
    norm.weight                                     [d_model]

transformers' `UMT5EncoderModel` computes the same function; the diffusers `text_encoder/` folder
already uses its names (`shared.weight`, `encoder.block.{i}.layer.{0,1}...`). Everything here only
renames keys and reads shapes, so it works on meta tensors and never copies weights.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from ..configs import T5Config
from .checkpoint import read_sharded, read_weights
from .errors import CheckpointError

# The embedding appears under two names in UMT5EncoderModel (tied weights); both must be filled.
HF_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
WAN_EMBEDDING_KEY = "token_embedding.weight"

# Per-block suffixes: Wan name -> HF name (below `blocks.{i}.` and `encoder.block.{i}.`).
_BLOCK_WAN_TO_HF = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_HF_TO_WAN = {hf: wan for wan, hf in _BLOCK_WAN_TO_HF.items()}
_GLOBAL_WAN_TO_HF = {"norm.weight": "encoder.final_layer_norm.weight"}
_GLOBAL_HF_TO_WAN = {hf: wan for wan, hf in _GLOBAL_WAN_TO_HF.items()}

_WAN_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK_KEY = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")

# Names of the official checkpoint and of the diffusers component folder (see loading/layout.py).
WAN_T5_FILENAME = "models_t5_umt5-xxl-enc-bf16.pth"
DIFFUSERS_T5_STEM = "model"


def wan_t5_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official Wan T5-encoder state dict to `UMT5EncoderModel` names.

    Both HF embedding names point at the same tensor object. Raises KeyError on any key that is
    not part of the encoder (e.g. a decoder or a shared-position-bias T5 variant).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key == WAN_EMBEDDING_KEY:
            for hf_key in HF_EMBEDDING_KEYS:
                out[hf_key] = tensor
            continue
        if key in _GLOBAL_WAN_TO_HF:
            out[_GLOBAL_WAN_TO_HF[key]] = tensor
            continue
        match = _WAN_BLOCK_KEY.match(key)
        if match is None or match.group(2) not in _BLOCK_WAN_TO_HF:
            raise KeyError(f"unknown key in a Wan umT5 encoder state dict: {key!r}")
        out[f"encoder.block.{match.group(1)}.{_BLOCK_WAN_TO_HF[match.group(2)]}"] = tensor
    return out


def hf_to_wan_t5(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `UMT5EncoderModel` state dict to the official Wan names (inverse of `wan_t5_to_hf`).

    The tied embedding is taken from `shared.weight`, or from `encoder.embed_tokens.weight` when
    the file stores only that name. Raises KeyError on any key outside the encoder.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in HF_EMBEDDING_KEYS:
            if key == "shared.weight" or WAN_EMBEDDING_KEY not in out:
                out[WAN_EMBEDDING_KEY] = tensor
            continue
        if key in _GLOBAL_HF_TO_WAN:
            out[_GLOBAL_HF_TO_WAN[key]] = tensor
            continue
        match = _HF_BLOCK_KEY.match(key)
        if match is None or match.group(2) not in _BLOCK_HF_TO_WAN:
            raise KeyError(f"unknown key in a UMT5EncoderModel state dict: {key!r}")
        out[f"blocks.{match.group(1)}.{_BLOCK_HF_TO_WAN[match.group(2)]}"] = tensor
    return out


def is_wan_t5_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for official Wan names, False for HF names (decided by the embedding key)."""
    if WAN_EMBEDDING_KEY in sd:
        return True
    if any(k in sd for k in HF_EMBEDDING_KEYS):
        return False
    raise KeyError(
        f"not a umT5 encoder state dict: no {WAN_EMBEDDING_KEY!r} (Wan) nor {HF_EMBEDDING_KEYS[0]!r} (HF) key"
    )


def to_hf_t5(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either layout -> `UMT5EncoderModel` names with both tied embedding names present."""
    if is_wan_t5_layout(sd):
        return wan_t5_to_hf(sd)
    # A round trip through the Wan names validates every key and fills in the missing tie.
    return wan_t5_to_hf(hf_to_wan_t5(sd))


def load_t5_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read umT5 encoder weights in HF names from any of the layouts users have.

    `path` may be the official `.pth` file, a `.safetensors` file, a diffusers `text_encoder/`
    folder (`model.safetensors` or `model-0000x-of-0000y.safetensors` + index), or an original
    model folder that holds `models_t5_umt5-xxl-enc-bf16.pth`.
    """
    path = Path(path).expanduser()
    if path.is_file():
        sd = read_weights(path)
    elif (path / WAN_T5_FILENAME).is_file():
        sd = read_weights(path / WAN_T5_FILENAME)
    elif path.is_dir():
        sd = read_sharded(path, DIFFUSERS_T5_STEM)
    else:
        raise CheckpointError(f"text encoder weights not found: {path}")
    try:
        return to_hf_t5(sd)
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]}") from e


def _shape(value) -> tuple[int, ...]:
    """Shape of a tensor (meta tensors included) or of a bare shape tuple / torch.Size."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def infer_t5_config(sd: Mapping, *, text_len: int = 512) -> T5Config:
    """The `T5Config` a state dict (either layout) was trained with, read from tensor shapes.

    Values may be tensors (meta is fine) or plain shapes. Only `relative_attention_max_distance`
    and `eps` are not recorded in the weights; they keep the umT5 defaults (128, 1e-6).
    """
    if not isinstance(text_len, int) or text_len < 2:
        raise ValueError(f"text_len must be an int >= 2 (room for a token and EOS); got {text_len!r}")
    hf = to_hf_t5(sd)
    vocab_size, d_model = _shape(hf["shared.weight"])
    layers = sorted({int(m.group(1)) for k in hf if (m := _HF_BLOCK_KEY.match(k))})
    if layers != list(range(len(layers))) or not layers:
        raise KeyError(f"encoder blocks must be numbered 0..n-1 without gaps; found {layers}")
    prefix = "encoder.block.0.layer."
    num_buckets, num_heads = _shape(hf[prefix + "0.SelfAttention.relative_attention_bias.weight"])
    inner_dim, q_in = _shape(hf[prefix + "0.SelfAttention.q.weight"])
    d_ff, ff_in = _shape(hf[prefix + "1.DenseReluDense.wi_0.weight"])
    if inner_dim % num_heads or q_in != d_model or ff_in != d_model:
        raise ValueError(
            f"inconsistent umT5 shapes: q {inner_dim}x{q_in}, wi_0 {d_ff}x{ff_in}, d_model {d_model}, "
            f"heads {num_heads} (q rows must be a multiple of heads)"
        )
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=inner_dim // num_heads,
        d_ff=d_ff,
        num_layers=len(layers),
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        text_len=text_len,
    )
