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
    # fp8 weights only (executor/fp8.py): per-output-channel fp32 scales of the quantized GEMMs.
    qkv_scale: torch.Tensor | None = None
    o_scale: torch.Tensor | None = None
    cross_q_scale: torch.Tensor | None = None
    cross_o_scale: torch.Tensor | None = None
    ffn1_scale: torch.Tensor | None = None
    ffn2_scale: torch.Tensor | None = None


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


# Store tensor -> (the official names concatenated into it, in row order; dtype class). Block
# names are relative to `blocks.{i}.`. One table drives both the build and `official_slots`.
GLOBAL_TABLE = {
    "patch_bias": (("patch_embedding.bias",), "compute"),
    "text_fc1_weight": (("text_embedding.0.weight",), "compute"),
    "text_fc1_bias": (("text_embedding.0.bias",), "compute"),
    "text_fc2_weight": (("text_embedding.2.weight",), "compute"),
    "text_fc2_bias": (("text_embedding.2.bias",), "compute"),
    "time_fc1_weight": (("time_embedding.0.weight",), "fp32"),
    "time_fc1_bias": (("time_embedding.0.bias",), "fp32"),
    "time_fc2_weight": (("time_embedding.2.weight",), "fp32"),
    "time_fc2_bias": (("time_embedding.2.bias",), "fp32"),
    "time_proj_weight": (("time_projection.1.weight",), "fp32"),
    "time_proj_bias": (("time_projection.1.bias",), "fp32"),
    "head_weight": (("head.head.weight",), "fp32"),
    "head_bias": (("head.head.bias",), "fp32"),
}
# Official MLPProj: proj.0 LayerNorm, proj.1 Linear, proj.2 GELU, proj.3 Linear, proj.4 LayerNorm.
IMAGE_TABLE = {f"{ours}_{leaf}": ((f"img_emb.proj.{theirs}.{leaf}",), IMAGE_TENSORS[f"{ours}_{leaf}"])
               for ours, theirs in (("img_ln_in", "0"), ("img_fc1", "1"), ("img_fc2", "3"), ("img_ln_out", "4"))
               for leaf in ("weight", "bias")}
BLOCK_TABLE = {
    "qkv_weight": (("self_attn.q.weight", "self_attn.k.weight", "self_attn.v.weight"), "compute"),
    "qkv_bias": (("self_attn.q.bias", "self_attn.k.bias", "self_attn.v.bias"), "compute"),
    "norm_q": (("self_attn.norm_q.weight",), "fp32"),
    "norm_k": (("self_attn.norm_k.weight",), "fp32"),
    "o_weight": (("self_attn.o.weight",), "compute"),
    "o_bias": (("self_attn.o.bias",), "compute"),
    "norm3_weight": (("norm3.weight",), "fp32"),
    "norm3_bias": (("norm3.bias",), "fp32"),
    "cross_q_weight": (("cross_attn.q.weight",), "compute"),
    "cross_q_bias": (("cross_attn.q.bias",), "compute"),
    "cross_norm_q": (("cross_attn.norm_q.weight",), "fp32"),
    "cross_o_weight": (("cross_attn.o.weight",), "compute"),
    "cross_o_bias": (("cross_attn.o.bias",), "compute"),
    "ffn1_weight": (("ffn.0.weight",), "compute"),
    "ffn1_bias": (("ffn.0.bias",), "compute"),
    "ffn2_weight": (("ffn.2.weight",), "compute"),
    "ffn2_bias": (("ffn.2.bias",), "compute"),
}
CONTEXT_TABLE = {
    "kv_weight": (("cross_attn.k.weight", "cross_attn.v.weight"), "compute"),
    "kv_bias": (("cross_attn.k.bias", "cross_attn.v.bias"), "compute"),
    "norm_k": (("cross_attn.norm_k.weight",), "fp32"),
}
CONTEXT_IMAGE_TABLE = {
    "img_kv_weight": (("cross_attn.k_img.weight", "cross_attn.v_img.weight"), "compute"),
    "img_kv_bias": (("cross_attn.k_img.bias", "cross_attn.v_img.bias"), "compute"),
    "norm_k_img": (("cross_attn.norm_k_img.weight",), "fp32"),
}


def _read_table(read: _Reader, table: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    # A single name is read, not concatenated, so a tensor already in its dtype stays shared.
    return {name: read(prefix + names[0], kind) if len(names) == 1 else read.cat([prefix + n for n in names], kind)
            for name, (names, kind) in table.items()}


def _tables(cfg: DiTConfig) -> tuple[dict, dict, dict]:
    image = cfg.uses_clip
    return ({**GLOBAL_TABLE, **(IMAGE_TABLE if image else {})}, BLOCK_TABLE,
            {**CONTEXT_TABLE, **(CONTEXT_IMAGE_TABLE if image else {})})


def global_tensors(cfg: DiTConfig, read: _Reader) -> dict[str, torch.Tensor]:
    patch = read("patch_embedding.weight", "compute")
    tensors = {
        "patch_weight": patch.reshape(cfg.dim, math.prod(patch.shape[1:])),
        **_read_table(read, _tables(cfg)[0]),
        "modulation": torch.cat([read(f"blocks.{i}.modulation", "fp32") for i in range(cfg.num_layers)]),
        "head_modulation": read("head.modulation", "fp32")[0],
    }
    if cfg.model_type == "flf2v":
        tensors["img_emb_pos"] = read("img_emb.emb_pos", "fp32")
    return tensors


def block_tensors(cfg: DiTConfig, read: _Reader, i: int) -> dict[str, torch.Tensor]:
    return _read_table(read, BLOCK_TABLE, f"blocks.{i}.")


def context_tensors(cfg: DiTConfig, read: _Reader, i: int) -> dict[str, torch.Tensor]:
    return _read_table(read, _tables(cfg)[2], f"blocks.{i}.")


def official_slots(cfg: DiTConfig, globals_: TensorStore, blocks: nn.ModuleList, contexts: nn.ModuleList
                   ) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    """Every official parameter name -> (a view of the stored tensor holding it, the official
    shape). Writing into a view (`view.copy_(...)`) changes the executor's weight in place, so
    LoRAs merge into the fused QKV / KV rows without rebuilding anything, and captured CUDA graphs,
    which read the weights by address, stay valid. A view's shape can differ from the official one
    (the patch embedding is stored flattened, the head modulation without its leading 1)."""
    global_table, block_table, context_table = _tables(cfg)
    slots: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}

    def add(store: TensorStore, table: dict, prefix: str = "") -> None:
        for name, (names, _) in table.items():
            tensor = getattr(store, name)
            rows = tensor.shape[0] // len(names)
            for j, official in enumerate(names):
                view = tensor[j * rows:(j + 1) * rows] if len(names) > 1 else tensor
                slots[prefix + official] = (view, tuple(view.shape))

    add(globals_, global_table)
    slots["patch_embedding.weight"] = (globals_.patch_weight,
                                       (cfg.dim, cfg.in_dim, *cfg.patch_size))
    slots["head.modulation"] = (globals_.head_modulation, (1, *globals_.head_modulation.shape))
    if cfg.model_type == "flf2v":
        slots["img_emb.emb_pos"] = (globals_.img_emb_pos, tuple(globals_.img_emb_pos.shape))
    for i in range(cfg.num_layers):
        modulation = globals_.modulation[i:i + 1]
        slots[f"blocks.{i}.modulation"] = (modulation, tuple(modulation.shape))
        add(blocks[i], block_table, f"blocks.{i}.")
        add(contexts[i], context_table, f"blocks.{i}.")
    return slots


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
