"""Cross-attention K/V of a request's context, computed once and reused by every denoising step.

In the official model every step recomputes the text MLP and, in each block, the k/v projections
and k RMSNorm of the same 512 context rows; none of it depends on the latents or the timestep.
`prepare_context_kv` does that work once per request.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..configs import DiTConfig
from ..ops import OpSet
from ..reference.dit import image_features, pad_context
from .weights import ContextWeights


@dataclass(frozen=True)
class TextKV:
    """Per-layer cross-attention keys (RMS-normed) and values of a batch of contexts.

    k, v: [num_layers, B, text_len, H, head_dim] in the compute dtype.
    k_img, v_img: i2v/flf2v CLIP-token keys/values [num_layers, B, T, H, head_dim] (T = 257, flf2v 514), else None.
    """

    k: torch.Tensor
    v: torch.Tensor
    k_img: torch.Tensor | None = None
    v_img: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Block i's (k, v, k_img, v_img), each [B, L, H, head_dim] or None."""
        image = (None, None) if self.k_img is None else (self.k_img[i], self.v_img[i])
        return self.k[i], self.v[i], *image

    def rows(self, start: int, stop: int) -> "TextKV":
        """Batch rows start .. stop - 1 (e.g. one CFG branch of the batched K/V)."""
        def part(t):
            return None if t is None else t[:, start:stop]
        return TextKV(part(self.k), part(self.v), part(self.k_img), part(self.v_img))

    @staticmethod
    def cat(parts: list["TextKV"]) -> "TextKV":
        """Stack several requests' K/V along the batch (e.g. CFG's cond, then uncond)."""
        if not parts:
            raise ValueError("parts must hold at least one TextKV")
        if len({p.k_img is None for p in parts}) != 1:
            raise ValueError("cannot concatenate TextKV with and without image K/V")

        def join(name):
            tensors = [getattr(p, name) for p in parts]
            return None if tensors[0] is None else torch.cat(tensors, dim=1)

        return TextKV(join("k"), join("v"), join("k_img"), join("v_img"))


def _project_kv(ops: OpSet, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm_k: torch.Tensor,
                cfg: DiTConfig, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, dim] -> (RMSNorm(k), v), each [B, L, H, head_dim] in `dtype`, from one fused GEMM."""
    kv = F.linear(x.to(dtype), weight, bias)
    k = ops.rms_norm(kv[..., : cfg.dim], norm_k, cfg.eps, dtype)
    heads = (cfg.num_heads, cfg.head_dim)
    return k.unflatten(-1, heads), kv[..., cfg.dim:].unflatten(-1, heads)


def embed_text(context: torch.Tensor, g: dict[str, torch.Tensor], cfg: DiTConfig, dtype: torch.dtype) -> torch.Tensor:
    """Official text MLP on the context zero-padded to text_len: [B, L, text_dim] -> [B, text_len, dim]."""
    text = pad_context(context, cfg.text_len).to(dtype)
    hidden = F.gelu(F.linear(text, g["text_fc1_weight"], g["text_fc1_bias"]), approximate="tanh")
    return F.linear(hidden, g["text_fc2_weight"], g["text_fc2_bias"])


def embed_image(clip_fea: torch.Tensor, g: dict[str, torch.Tensor], cfg: DiTConfig, dtype: torch.dtype) -> torch.Tensor:
    """Official MLPProj: CLIP features [B, T, image_dim] -> fp32 [B, T, dim] (LayerNorms in fp32)."""
    x = clip_fea.float()
    if "img_emb_pos" in g:
        x = x + g["img_emb_pos"]
    x = F.layer_norm(x, (cfg.image_dim,), g["img_ln_in_weight"], g["img_ln_in_bias"], 1e-5)
    x = F.gelu(F.linear(x.to(dtype), g["img_fc1_weight"], g["img_fc1_bias"]))
    x = F.linear(x, g["img_fc2_weight"], g["img_fc2_bias"])
    return F.layer_norm(x.float(), (cfg.dim,), g["img_ln_out_weight"], g["img_ln_out_bias"], 1e-5)


def prepare_context_kv(ops: OpSet, cfg: DiTConfig, dtype: torch.dtype, g: dict[str, torch.Tensor],
                       layers: list[ContextWeights], context: torch.Tensor,
                       clip_fea: torch.Tensor | None = None) -> TextKV:
    """context [B, L <= text_len, text_dim] (+ clip_fea for i2v/flf2v) -> TextKV for every layer."""
    if context.ndim != 3 or context.shape[2] != cfg.text_dim:
        raise ValueError(f"context must be [B, L, text_dim={cfg.text_dim}], got {tuple(context.shape)}")
    clip_fea = image_features(clip_fea, cfg, context.shape[0])
    text = embed_text(context, g, cfg, dtype)
    ks, vs = zip(*(_project_kv(ops, text, w.kv_weight, w.kv_bias, w.norm_k, cfg, dtype) for w in layers))
    if clip_fea is None:
        return TextKV(torch.stack(ks), torch.stack(vs))
    image = embed_image(clip_fea, g, cfg, dtype)
    k_img, v_img = zip(*(_project_kv(ops, image, w.img_kv_weight, w.img_kv_bias, w.norm_k_img, cfg, dtype)
                         for w in layers))
    return TextKV(torch.stack(ks), torch.stack(vs), torch.stack(k_img), torch.stack(v_img))
