"""Eager reference of the image encoder Wan2.1 I2V/FLF2V condition on, written for clarity.

It is the visual tower of open_clip's `xlm-roberta-large-vit-huge-14` (ViT-H/14), as the official
`wan/modules/clip.py` builds it for `clip_xlm_roberta_vit_h_14` and `CLIPModel.visual` runs it:
- patch embedding: Conv2d(3, dim, patch, stride=patch) **without bias** (`bias=not pre_norm`,
  pre_norm is on); a class token `cls_embedding` [1, 1, dim] goes first, then `pos_embedding`
  [1, tokens, dim] is added and `pre_norm` (LayerNorm) applied;
- pre-LN blocks (`post_norm=False`): `x + attn(norm1(x))`, then `x + mlp(norm2(x))`; attention is
  one fused `to_qkv` Linear whose rows are q, k, v (each head-major), scale 1/sqrt(head_dim), no
  mask; the MLP is Linear -> exact GELU (`activation='gelu'`, not open_clip's quick-GELU) -> Linear;
  LayerNorm eps 1e-5;
- Wan calls it with `use_31_block=True`: the output after all blocks **but the last**, without
  `post_norm` or the head. This module therefore holds `num_layers - 1` blocks only.

`state_dict()` has the official names below `visual.` (e.g. `transformer.0.attn.to_qkv.weight`);
`wan_engine.loading.clip_format` maps the official file and transformers' `CLIPVisionModel` onto them.

Precision (`compute_dtype`). The official runs the tower in fp16 (`clip_dtype`): weights cast to
fp16, convolutions, GEMMs, attention and the residual stream in fp16 under autocast, while its
`LayerNorm` subclass computes in fp32 and returns the input's dtype. With a half `compute_dtype`
this module does the same explicitly; with fp32 (the default) everything is fp32, the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wan_engine.configs import ImageEncoderConfig
from wan_engine.reference.dit import COMPUTE_DTYPES, linear as _linear


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """The official LayerNorm subclass: fp32 math on an fp32 copy, returned in x's dtype."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        """x [B, S, dim] -> [B, S, dim] in compute_dtype."""
        b, s, dim = x.shape
        # The fused rows are [q | k | v], each split into heads of dim // num_heads (official view(b, s, 3, n, d)).
        q, k, v = _linear(x, self.to_qkv, compute_dtype).view(b, s, 3, self.num_heads, dim // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return _linear(out.transpose(1, 2).reshape(b, s, dim), self.proj, compute_dtype)


class AttentionBlock(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = SelfAttention(cfg.dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        # Indices 0 and 2 as in the official Sequential(Linear, GELU, Linear, Dropout).
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim))

    def forward(self, x: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        x = x + self.attn(_layer_norm(x, self.norm1), compute_dtype)
        hidden = F.gelu(_linear(_layer_norm(x, self.norm2), self.mlp[0], compute_dtype))
        return x + _linear(hidden, self.mlp[2], compute_dtype)


class WanImageEncoder(nn.Module):
    """CLIP ViT-H/14 penultimate-block features, as the official `CLIPModel.visual` computes them.

    compute_dtype: dtype of the convolution, GEMMs, attention and residual stream (LayerNorms are
    always fp32); fp32 is the reference, fp16 what the official I2V run uses.
    """

    def __init__(self, cfg: ImageEncoderConfig, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype}")
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.patch_embedding = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, cfg.tokens, cfg.dim))
        self.pre_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        # The last block's output is never used (use_31_block), so it is not built.
        self.transformer = nn.ModuleList(AttentionBlock(cfg) for _ in range(cfg.num_layers - 1))

    def _check_images(self, images: torch.Tensor, name: str, size: tuple[int, int] | None) -> None:
        expected = f"[B, 3, {size[0]}, {size[1]}]" if size else "[B, 3, H, W]"
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name} must be a {expected} tensor (3 colour channels), got {got}")
        if size and tuple(images.shape[2:]) != size:
            raise ValueError(f"{name} must be {expected} (run preprocess() first), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {images.dtype}")
        if images.shape[0] == 0 or 0 in images.shape[2:]:
            raise ValueError(f"{name} must hold at least one non-empty image, got {tuple(images.shape)}")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> normalized fp32 pixels [B, 3, image_size, image_size].

        As the official `CLIPModel.visual`: bicubic resize to image_size x image_size (align_corners
        False, no antialias, no clamp, the aspect ratio is not kept), then [-1, 1] -> [0, 1] by
        `* 0.5 + 0.5`, then `(x - mean) / std` per channel, all in fp32.
        """
        self._check_images(images, "images", None)
        size = (self.cfg.image_size, self.cfg.image_size)
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        x = x * 0.5 + 0.5
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, image_size, image_size] (normalized) -> features [B, tokens, dim], fp32.

        With a half compute_dtype the features are computed in it and returned upcast (lossless).
        """
        self._check_images(pixels, "pixels", (self.cfg.image_size, self.cfg.image_size))
        dtype = self.compute_dtype
        weight = self.patch_embedding.weight.to(dtype)
        x = F.conv2d(pixels.to(dtype), weight, stride=self.cfg.patch_size).flatten(2).transpose(1, 2)
        cls = self.cls_embedding.to(dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding.to(dtype)
        x = _layer_norm(x, self.pre_norm)
        for block in self.transformer:
            x = block(x, dtype)
        return x.float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> features [B, tokens, dim] fp32: forward(preprocess(images))."""
        return self(self.preprocess(images))
