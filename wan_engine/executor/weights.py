"""The executor's weights: fused and cast once, at build time, from the official state-dict names.

Layout choices (all made here, so the forward does no casting or concatenation):
- self-attention q, k, v are concatenated into one [3*dim, dim] GEMM (one read of the input);
- cross-attention k, v (and the i2v k_img, v_img) into one [2*dim, dim] GEMM each: they run once
  per request, in `prepare_text`, never in the denoising step;
- GEMM weights and biases are stored in the compute dtype (the official casts them to bf16 under
  autocast); the official fp32 regions keep fp32: time embedding and projection, modulation
  tables, every norm weight, the head (and the i2v image LayerNorms);
- the per-block modulation tables are stacked into one [num_layers, 6, dim] tensor so that a
  step's modulation for every block and sample is a single add.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..configs import DiTConfig

FP32 = torch.float32


class BlockWeights(NamedTuple):
    """One block's step-path tensors (a NamedTuple so torch.compile sees plain tensor inputs).

    GEMM weights [out, in] and biases in the compute dtype; norm weights fp32 [dim].
    """

    qkv_weight: torch.Tensor  # [3*dim, dim]: q, k, v rows
    qkv_bias: torch.Tensor  # [3*dim]
    norm_q: torch.Tensor  # self-attention q RMSNorm over the whole dim
    norm_k: torch.Tensor
    o_weight: torch.Tensor
    o_bias: torch.Tensor
    norm3_weight: torch.Tensor  # cross_attn_norm (affine LayerNorm)
    norm3_bias: torch.Tensor
    cross_q_weight: torch.Tensor
    cross_q_bias: torch.Tensor
    cross_norm_q: torch.Tensor
    cross_o_weight: torch.Tensor
    cross_o_bias: torch.Tensor
    ffn1_weight: torch.Tensor  # [ffn_dim, dim]
    ffn1_bias: torch.Tensor
    ffn2_weight: torch.Tensor  # [dim, ffn_dim]
    ffn2_bias: torch.Tensor


class ContextWeights(NamedTuple):
    """One block's cross-attention K/V tensors, used once per request by `prepare_text`."""

    kv_weight: torch.Tensor  # [2*dim, dim]: k rows, then v rows (compute dtype)
    kv_bias: torch.Tensor
    norm_k: torch.Tensor  # fp32 [dim]
    img_kv_weight: torch.Tensor | None  # i2v/flf2v: k_img, v_img fused; None for t2v
    img_kv_bias: torch.Tensor | None
    norm_k_img: torch.Tensor | None


# Dtype class of the i2v image-embedding tensors ("compute" or "fp32").
IMAGE_TENSORS = {
    "img_ln_in_weight": "fp32", "img_ln_in_bias": "fp32",
    "img_fc1_weight": "compute", "img_fc1_bias": "compute",
    "img_fc2_weight": "compute", "img_fc2_bias": "compute",
    "img_ln_out_weight": "fp32", "img_ln_out_bias": "fp32",
}


class TensorStore(nn.Module):
    """Named tensors registered as buffers, so `.to(device)` moves them with the executor."""

    def __init__(self, tensors: dict[str, torch.Tensor | None]):
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)

    def take(self, cls):
        """The store's tensors as the NamedTuple `cls` (absent fields are None)."""
        return cls(**{name: getattr(self, name, None) for name in cls._fields})


class _Reader:
    """Reads official state-dict entries, cast, with a clear error for a missing name. With
    `consume`, each entry is popped as it is read, so a tensor the executor copies (fused or cast)
    is freed as soon as its copy exists."""

    def __init__(self, state_dict: dict[str, torch.Tensor], compute_dtype: torch.dtype, consume: bool = False):
        self.sd = state_dict
        self.dtypes = {"compute": compute_dtype, "fp32": FP32}
        self.consume = consume

    def __call__(self, name: str, kind: str) -> torch.Tensor:
        try:
            tensor = self.sd.pop(name) if self.consume else self.sd[name]
        except KeyError:
            raise ValueError(f"state dict has no {name!r}: the executor needs the official WanModel names "
                             f"(convert diffusers checkpoints with wan_engine.loading first)") from None
        if tensor.is_meta:
            raise ValueError(f"{name!r} is on the meta device: load weights before building the executor")
        # detach: share storage with a module's parameters without tracking gradients.
        return tensor.detach().to(self.dtypes[kind])

    def cat(self, names: list[str], kind: str) -> torch.Tensor:
        return torch.cat([self(name, kind) for name in names], dim=0)


def global_tensors(cfg: DiTConfig, read: _Reader) -> dict[str, torch.Tensor]:
    patch = read("patch_embedding.weight", "compute")
    tensors = {
        "patch_weight": patch.reshape(cfg.dim, math.prod(patch.shape[1:])),
        "patch_bias": read("patch_embedding.bias", "compute"),
        "text_fc1_weight": read("text_embedding.0.weight", "compute"),
        "text_fc1_bias": read("text_embedding.0.bias", "compute"),
        "text_fc2_weight": read("text_embedding.2.weight", "compute"),
        "text_fc2_bias": read("text_embedding.2.bias", "compute"),
        "time_fc1_weight": read("time_embedding.0.weight", "fp32"),
        "time_fc1_bias": read("time_embedding.0.bias", "fp32"),
        "time_fc2_weight": read("time_embedding.2.weight", "fp32"),
        "time_fc2_bias": read("time_embedding.2.bias", "fp32"),
        "time_proj_weight": read("time_projection.1.weight", "fp32"),
        "time_proj_bias": read("time_projection.1.bias", "fp32"),
        "modulation": torch.cat([read(f"blocks.{i}.modulation", "fp32") for i in range(cfg.num_layers)]),
        "head_modulation": read("head.modulation", "fp32")[0],
        "head_weight": read("head.head.weight", "fp32"),
        "head_bias": read("head.head.bias", "fp32"),
    }
    if cfg.model_type != "t2v":
        # Official MLPProj: proj.0 LayerNorm, proj.1 Linear, proj.2 GELU, proj.3 Linear, proj.4 LayerNorm.
        for ours, theirs in (("img_ln_in", "0"), ("img_fc1", "1"), ("img_fc2", "3"), ("img_ln_out", "4")):
            for leaf in ("weight", "bias"):
                name = f"{ours}_{leaf}"
                tensors[name] = read(f"img_emb.proj.{theirs}.{leaf}", IMAGE_TENSORS[name])
        if cfg.model_type == "flf2v":
            tensors["img_emb_pos"] = read("img_emb.emb_pos", "fp32")
    return tensors


def block_tensors(cfg: DiTConfig, read: _Reader, i: int) -> dict[str, torch.Tensor]:
    p = f"blocks.{i}."
    sa, ca = p + "self_attn.", p + "cross_attn."
    return {
        "qkv_weight": read.cat([sa + "q.weight", sa + "k.weight", sa + "v.weight"], "compute"),
        "qkv_bias": read.cat([sa + "q.bias", sa + "k.bias", sa + "v.bias"], "compute"),
        "norm_q": read(sa + "norm_q.weight", "fp32"),
        "norm_k": read(sa + "norm_k.weight", "fp32"),
        "o_weight": read(sa + "o.weight", "compute"),
        "o_bias": read(sa + "o.bias", "compute"),
        "norm3_weight": read(p + "norm3.weight", "fp32"),
        "norm3_bias": read(p + "norm3.bias", "fp32"),
        "cross_q_weight": read(ca + "q.weight", "compute"),
        "cross_q_bias": read(ca + "q.bias", "compute"),
        "cross_norm_q": read(ca + "norm_q.weight", "fp32"),
        "cross_o_weight": read(ca + "o.weight", "compute"),
        "cross_o_bias": read(ca + "o.bias", "compute"),
        "ffn1_weight": read(p + "ffn.0.weight", "compute"),
        "ffn1_bias": read(p + "ffn.0.bias", "compute"),
        "ffn2_weight": read(p + "ffn.2.weight", "compute"),
        "ffn2_bias": read(p + "ffn.2.bias", "compute"),
    }


def context_tensors(cfg: DiTConfig, read: _Reader, i: int) -> dict[str, torch.Tensor]:
    ca = f"blocks.{i}.cross_attn."
    tensors = {
        "kv_weight": read.cat([ca + "k.weight", ca + "v.weight"], "compute"),
        "kv_bias": read.cat([ca + "k.bias", ca + "v.bias"], "compute"),
        "norm_k": read(ca + "norm_k.weight", "fp32"),
    }
    if cfg.model_type != "t2v":
        tensors.update({
            "img_kv_weight": read.cat([ca + "k_img.weight", ca + "v_img.weight"], "compute"),
            "img_kv_bias": read.cat([ca + "k_img.bias", ca + "v_img.bias"], "compute"),
            "norm_k_img": read(ca + "norm_k_img.weight", "fp32"),
        })
    return tensors


def check_supported(cfg: DiTConfig) -> None:
    """The executor's fused kernels assume the published Wan2.1 architecture."""
    if not cfg.qk_norm:
        raise ValueError("the executor needs qk_norm=True (every Wan2.1 model); use engine='reference'")
    if not cfg.cross_attn_norm:
        raise ValueError("the executor needs cross_attn_norm=True (every Wan2.1 model); use engine='reference'")


def build_stores(cfg: DiTConfig, state_dict: dict[str, torch.Tensor], compute_dtype: torch.dtype,
                 consume: bool = False) -> tuple[TensorStore, nn.ModuleList, nn.ModuleList]:
    """(globals, per-block step weights, per-block context K/V weights) as buffer stores.

    Tensors already in the target dtype are shared with `state_dict`, not copied. With
    `consume`, entries are popped from `state_dict` as they are read (see `_Reader`).
    """
    check_supported(cfg)
    read = _Reader(state_dict, compute_dtype, consume)
    blocks = nn.ModuleList(TensorStore(block_tensors(cfg, read, i)) for i in range(cfg.num_layers))
    contexts = nn.ModuleList(TensorStore(context_tensors(cfg, read, i)) for i in range(cfg.num_layers))
    return TensorStore(global_tensors(cfg, read)), blocks, contexts
