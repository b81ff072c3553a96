"""Eager reference of the official Wan2.1 diffusion transformer (`WanModel`), written for clarity.

`WanDiT.state_dict()` has exactly the official key names and shapes, so official checkpoints load
as they are (diffusers checkpoints through `wan_engine.loading.dit_format`).

Precision (`compute_dtype`). The official code keeps fp32 parameters and runs the model under
`torch.autocast(bfloat16)`, with fp32 regions for the time embedding, the modulation and the head.
This module makes that explicit instead of relying on autocast:
- GEMMs and convolutions outside the fp32 regions (patch embedding, text and image MLPs, q/k/v/o,
  FFN) cast input and weight to `compute_dtype` and return `compute_dtype`;
- the time embedding, modulation, every norm, RoPE (float64), the gated residual and the head run
  in fp32; parameters are read as fp32 whatever their storage dtype;
- attention runs in `compute_dtype` (the official casts q/k/v to bf16 for flash-attn) and is
  returned in q's dtype (fp32), as the official does.
With `compute_dtype=torch.float32` (the default) everything is fp32: the exact reference.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from wan_engine.configs import DiTConfig
from wan_engine.reference.rope import rope_apply_table, rope_freqs, rope_grid_table

# Parameters the official bf16 run reads in fp32 whatever the autocast dtype: its fp32 autocast
# regions (time embedding, time projection, block and head modulation, the head) and every norm's
# weights (norms compute in fp32 and multiply by the stored fp32 gain), plus flf2v's position table,
# which is added in fp32. Everything else is a GEMM/conv weight that autocast casts to bf16.
FP32_PARAMETERS = re.compile(
    r"^(time_embedding\.|time_projection\.|head\.|img_emb\.proj\.[04]\.|img_emb\.emb_pos$)"
    r"|\.modulation$|\.norm(_q|_k|_k_img|3)\.(weight|bias)$"
)
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Plain functions the optimized executor reuses
# ----------------------------------------------------------------------------------------------

def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Official timestep embedding: float64 `[B, dim]`, cos half first, then sin.

    Column i < dim/2 is cos(t * 10000^(-i/(dim/2))), column dim/2 + i the matching sin.
    (diffusers computes the same in fp32, which moves the result by ~1e-5 at t ~ 1000.)
    """
    if dim % 2 or dim < 2:
        raise ValueError(f"dim must be an even number >= 2, got {dim}")
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def linear(x: torch.Tensor, layer: nn.Linear, compute_dtype: torch.dtype) -> torch.Tensor:
    """`layer(x)` with input, weight and bias cast to `compute_dtype` (explicit autocast)."""
    bias = None if layer.bias is None else layer.bias.to(compute_dtype)
    return F.linear(x.to(compute_dtype), layer.weight.to(compute_dtype), bias)


def time_conditioning(t: torch.Tensor, time_embedding: nn.Sequential, time_projection: nn.Sequential,
                      freq_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps t [B] -> (e [B, dim], e0 [B, 6, dim]), both fp32 (an official fp32 region).

    e feeds the head's modulation; e0 = Linear(SiLU(e)) feeds every block's modulation.
    """
    fp32 = torch.float32
    sinusoid = sinusoidal_embedding_1d(freq_dim, t).float()
    e = linear(F.silu(linear(sinusoid, time_embedding[0], fp32)), time_embedding[2], fp32)
    e0 = linear(F.silu(e), time_projection[1], fp32)
    return e, e0.unflatten(1, (6, e.shape[1]))


def check_timesteps(t: torch.Tensor, batch: int) -> None:
    """t: [B] (one timestep for every token), or [B, 2] (latent frame 0's tokens, then every later
    token): Wan2.2 TI2V's image-to-video keeps its conditioning frame at t = 0."""
    if t.shape not in ((batch,), (batch, 2)):
        raise ValueError(f"t must have shape [B] or [B, 2] (latent frame 0, the rest) with B = {batch}; "
                         f"got {tuple(t.shape)}")


def token_timesteps(t: torch.Tensor, frame0_tokens: int, seq_len: int) -> torch.Tensor:
    """The official Wan2.2 per-token form of t [B, 2]: [B, seq_len], frame 0's tokens at t[:, 0],
    every later token (padding included, as the official pads with the timestep) at t[:, 1]."""
    out = t[:, 1:].expand(-1, seq_len).clone()
    out[:, :frame0_tokens] = t[:, :1]
    return out


def time_conditioning_per_token(t: torch.Tensor, time_embedding: nn.Sequential, time_projection: nn.Sequential,
                                freq_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token timesteps t [B, S] -> (e [B, S, dim], e0 [B, S, 6, dim]): the official Wan2.2
    `WanModel.forward`, which embeds every token's timestep (flattened) in fp32."""
    e, e0 = time_conditioning(t.flatten(), time_embedding, time_projection, freq_dim)
    return e.unflatten(0, t.shape), e0.unflatten(0, t.shape)


def block_modulation(modulation: torch.Tensor, e0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Block table [1, 6, dim] + e0 [B, 6, dim] (or per token [B, S, 6, dim]) in fp32 -> six
    [B, 1, dim] (or [B, S, dim]) tensors: (shift, scale, gate) for self-attention, then for the FFN."""
    if e0.ndim == 4:
        return tuple(m.squeeze(2) for m in (modulation.float()[None] + e0.float()).chunk(6, dim=2))
    return (modulation.float() + e0.float()).chunk(6, dim=1)


def head_modulation(modulation: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head table [1, 2, dim] + e [B, dim] (the time embedding, not e0) -> (shift, scale) [B, 1, dim];
    per token, e [B, S, dim] -> [B, S, dim] each."""
    if e.ndim == 3:
        return tuple(m.squeeze(2) for m in (modulation.float()[None] + e.float().unsqueeze(2)).chunk(2, dim=2))
    shift, scale = (modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
    return shift, scale


def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[B, C, F, H, W] -> (tokens [B, f*h*w, C*pt*ph*pw], grid (f, h, w)).

    Tokens are ordered frame, then h, then w; a token's channels are laid out (C, pt, ph, pw), so
    `tokens @ conv.weight.flatten(1).T + conv.bias` equals the official stride-equal-kernel Conv3d.
    """
    b, c, frames, height, width = x.shape
    pt, ph, pw = patch_size
    if frames % pt or height % ph or width % pw:
        raise ValueError(f"x's (F, H, W) = {(frames, height, width)} must be divisible by patch_size {patch_size}")
    grid = (frames // pt, height // ph, width // pw)
    x = x.reshape(b, c, grid[0], pt, grid[1], ph, grid[2], pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, math.prod(grid), c * pt * ph * pw), grid


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int],
               out_dim: int) -> torch.Tensor:
    """Head output [B, S, pt*ph*pw*out_dim] (S >= f*h*w; padded rows dropped) -> [B, out_dim, F, H, W].

    The official channel layout of a token is (pt, ph, pw, c) with c fastest.
    """
    f, h, w = grid
    pt, ph, pw = patch_size
    b = tokens.shape[0]
    x = tokens[:, : f * h * w].reshape(b, f, h, w, pt, ph, pw, out_dim)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, out_dim, f * pt, h * ph, w * pw)


def pad_context(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """Zero-pad text embeddings [B, L, D] to [B, text_len, D] (official: before the text MLP).

    A batch whose prompts have different true lengths is already zero-padded to a common L, which
    gives the same result as the official per-prompt padding.
    """
    if context.ndim != 3:
        raise ValueError(f"context must be [B, L, text_dim], got shape {tuple(context.shape)}")
    length = context.shape[1]
    if not 1 <= length <= text_len:
        raise ValueError(f"context length L must be in [1, {text_len}] (text_len), got {length}")
    return F.pad(context, (0, 0, 0, text_len - length))


def video_input(cfg: DiTConfig, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Validate the latents `x` [B, C, F, H, W] (+ i2v conditioning `y`) and concatenate them on channels."""
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        raise ValueError(f"x must be [B, C, F, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if y is not None:
        if y.ndim != 5 or y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
            raise ValueError(f"y must be [B, C_y, F, H, W] matching x {tuple(x.shape)}, got {tuple(y.shape)}")
        x = torch.cat([x, y.to(x.dtype)], dim=1)
    elif cfg.model_type != "t2v":
        raise ValueError(f"model_type {cfg.model_type!r} needs y (conditioning latents)")
    if x.shape[1] != cfg.in_dim:
        raise ValueError(f"x (+ y) must have in_dim={cfg.in_dim} channels, got {x.shape[1]}")
    for size, p, axis in zip(x.shape[2:], cfg.patch_size, "FHW"):
        if size % p:
            raise ValueError(f"x's {axis} = {size} must be divisible by patch size {p}")
    return x


def _layer_norm(x: torch.Tensor, eps: float, norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """Official WanLayerNorm: computed in fp32, returned in x's dtype."""
    weight = None if norm is None else norm.weight.float()
    bias = None if norm is None else norm.bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps).to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, compute_dtype: torch.dtype,
               key_len: int | None = None) -> torch.Tensor:
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H*D] in q's dtype; keys >= key_len masked."""
    mask = None
    if key_len is not None and key_len < k.shape[1]:
        mask = (torch.arange(k.shape[1], device=k.device) < key_len)[None, :]  # [1, Lk] broadcast
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).to(compute_dtype), k.transpose(1, 2).to(compute_dtype),
        v.transpose(1, 2).to(compute_dtype), attn_mask=mask)
    return out.transpose(1, 2).flatten(2).to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Modules (attribute names are the official state-dict names)
# ----------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """Official WanRMSNorm over the whole last dim (all heads together): fp32 statistics, the
    normalized value rounded to x's dtype, then multiplied by the fp32 gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.float()


def _qk_norm(dim: int, eps: float, enabled: bool) -> nn.Module:
    return RMSNorm(dim, eps) if enabled else nn.Identity()


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = _qk_norm(dim, eps, qk_norm)
        self.norm_k = _qk_norm(dim, eps, qk_norm)

    def forward(self, x, rope_table, key_len, compute_dtype):
        """x [B, S, dim] -> [B, S, dim] in compute_dtype; RoPE (the grid's complex table) on the
        first f*h*w rows."""
        heads = (self.num_heads, -1)
        q = self.norm_q(linear(x, self.q, compute_dtype)).unflatten(2, heads)
        k = self.norm_k(linear(x, self.k, compute_dtype)).unflatten(2, heads)
        v = linear(x, self.v, compute_dtype).unflatten(2, heads)
        out = _attention(rope_apply_table(q, rope_table), rope_apply_table(k, rope_table), v, compute_dtype, key_len)
        return linear(out, self.o, compute_dtype)


class CrossAttention(nn.Module):
    """Text cross-attention; with `image=True` (i2v/flf2v) also attends to the CLIP tokens that
    precede the text rows in the context: `o(attn(q, k, v) + attn(q, k_img, v_img))`."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image: bool, text_len: int):
        super().__init__()
        self.num_heads = num_heads
        self.text_len = text_len
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = _qk_norm(dim, eps, qk_norm)
        self.norm_k = _qk_norm(dim, eps, qk_norm)
        self.image = image
        if image:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = _qk_norm(dim, eps, qk_norm)

    def forward(self, x, context, compute_dtype):
        """x [B, S, dim], context [B, (image tokens +) text_len, dim] -> [B, S, dim] in compute_dtype."""
        heads = (self.num_heads, -1)
        image_tokens = context.shape[1] - self.text_len
        text = context[:, image_tokens:]
        q = self.norm_q(linear(x, self.q, compute_dtype)).unflatten(2, heads)
        k = self.norm_k(linear(text, self.k, compute_dtype)).unflatten(2, heads)
        v = linear(text, self.v, compute_dtype).unflatten(2, heads)
        out = _attention(q, k, v, compute_dtype)
        if self.image:
            image = context[:, :image_tokens]
            k_img = self.norm_k_img(linear(image, self.k_img, compute_dtype)).unflatten(2, heads)
            v_img = linear(image, self.v_img, compute_dtype).unflatten(2, heads)
            out = out + _attention(q, k_img, v_img, compute_dtype)
        return linear(out, self.o, compute_dtype)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        image = cfg.uses_clip
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps, image, cfg.text_len)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))

    def forward(self, x, e0, context, rope_table, key_len, compute_dtype):
        """x [B, S, dim] (compute_dtype before block 0, fp32 after), e0 [B, 6, dim] -> fp32 [B, S, dim]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = block_modulation(self.modulation, e0)
        # The official rounds LN(x) to x's dtype, then modulates in fp32; the gated residual
        # promotes the stream to fp32.
        h = _layer_norm(x, self.eps).float() * (1 + scale1) + shift1
        x = x + self.self_attn(h, rope_table, key_len, compute_dtype) * gate1
        h = x if self.norm3 is None else _layer_norm(x, self.eps, self.norm3)
        x = x + self.cross_attn(h, context, compute_dtype)
        h = _layer_norm(x, self.eps).float() * (1 + scale2) + shift2
        y = linear(F.gelu(linear(h, self.ffn[0], compute_dtype), approximate="tanh"), self.ffn[2], compute_dtype)
        return x + y * gate2


class DiTHead(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, S, dim], e [B, dim] -> fp32 [B, S, pt*ph*pw*out_dim] (an official fp32 region)."""
        shift, scale = head_modulation(self.modulation, e)
        h = _layer_norm(x.float(), self.eps) * (1 + scale) + shift
        return linear(h, self.head, torch.float32)


def image_features(clip_fea: torch.Tensor | None, cfg: DiTConfig, batch: int) -> torch.Tensor | None:
    """clip_fea as [B, T, image_dim] (T = image_tokens; flf2v 2 x image_tokens, the first frame's
    rows then the last's), or a clear error; None for t2v. flf2v also takes the official
    [2B, image_tokens, image_dim] pairs (first, last frame of each sample)."""
    if not cfg.uses_clip:
        if clip_fea is not None:
            kind = "an i2v model without CLIP (Wan2.2)" if cfg.model_type != "t2v" else "model_type 't2v'"
            raise ValueError(f"clip_fea is only accepted by i2v/flf2v models with CLIP; this is {kind}")
        return None
    tokens = (2 if cfg.model_type == "flf2v" else 1) * cfg.image_tokens
    dim = cfg.image_dim
    if (not isinstance(clip_fea, torch.Tensor) or clip_fea.ndim != 3 or clip_fea.shape[-1] != dim
            or clip_fea.numel() != batch * tokens * dim):
        got = None if not isinstance(clip_fea, torch.Tensor) else tuple(clip_fea.shape)
        raise ValueError(f"model_type {cfg.model_type!r} needs clip_fea with B*{tokens} tokens of {dim} "
                         f"([{batch}, {tokens}, {dim}]), got {got}")
    return clip_fea.reshape(batch, tokens, dim)


class ImageEmbedding(nn.Module):
    """Official MLPProj: CLIP features -> dim. LN -> Linear -> GELU (exact) -> Linear -> LN;
    flf2v adds a learned position table over the first and last frames' tokens."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.image_dim
        self.proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.dim),
                                  nn.LayerNorm(cfg.dim))
        if cfg.model_type == "flf2v":
            self.emb_pos = nn.Parameter(torch.zeros(1, 2 * cfg.image_tokens, d))

    def forward(self, clip_fea: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        """clip_fea [B, T, image_dim] -> [B, T, dim] fp32 (the final LayerNorm is an fp32 op)."""
        x = clip_fea
        if hasattr(self, "emb_pos"):
            x = x.float() + self.emb_pos.float()
        ln_in, fc1, _, fc2, ln_out = self.proj
        x = F.layer_norm(x.float(), (x.shape[-1],), ln_in.weight.float(), ln_in.bias.float(), ln_in.eps)
        x = linear(F.gelu(linear(x, fc1, compute_dtype)), fc2, compute_dtype)
        return F.layer_norm(x.float(), (x.shape[-1],), ln_out.weight.float(), ln_out.bias.float(), ln_out.eps)


class WanDiT(nn.Module):
    """The official Wan2.1 `WanModel` (t2v, i2v, flf2v) as an eager reference.

    compute_dtype: dtype of the GEMMs and attention outside the official fp32 regions (see the
    module docstring); torch.float32 (default, exact), torch.bfloat16 (the official amp run) or
    torch.float16.
    """

    def __init__(self, config: DiTConfig, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype}")
        self.config = config
        self.compute_dtype = compute_dtype
        cfg = config
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = DiTHead(cfg)
        if cfg.uses_clip:
            self.img_emb = ImageEmbedding(cfg)
        self._rope_tables: dict[tuple, torch.Tensor] = {}

    def rope_table(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """The official complex128 RoPE rotations of `grid` on `device`, built once per (grid,
        device) and kept by this instance: the table and its host-to-device copy would otherwise
        be rebuilt every forward (the GPU check runs the reference many times)."""
        key = (tuple(grid), torch.device(device))
        if key not in self._rope_tables:
            self._rope_tables[key] = rope_grid_table(rope_freqs(self.config.head_dim), grid).to(device)
        return self._rope_tables[key]

    @staticmethod
    def is_fp32_parameter(name: str) -> bool:
        """True for the parameters (official state-dict names) that stay fp32 in a bf16/fp16 model:
        the official fp32 regions and norm weights. Loaders honour it (`loading.checkpoint.load_into`),
        so a low-precision load rounds only the GEMM and convolution weights, as autocast does."""
        return FP32_PARAMETERS.search(name) is not None

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, seq_len: int | None = None,
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the flow velocity.

        x: noisy latents [B, C, F, H, W]; y: i2v/flf2v conditioning [B, in_dim - C, F, H, W],
        concatenated after x on channels. t: timesteps [B] (the official passes 0..999 values), or
        [B, 2] (latent frame 0's tokens, the rest: Wan2.2 TI2V), run per token as the official.
        context: text embeddings [B, L, text_dim], L <= text_len (zero-padded to text_len here).
        seq_len: token count to pad the video sequence to (>= f*h*w); padded keys are masked.
        clip_fea: CLIP features [B, 257, 1280] for i2v; for flf2v [B, 514, 1280] (first frame's
        tokens, then the last frame's) or the official [2B, 257, 1280] pairs (`image_features`).
        Returns fp32 [B, out_dim, F, H, W].
        """
        cfg, cd = self.config, self.compute_dtype
        x = video_input(cfg, x, y)
        batch = x.shape[0]
        check_timesteps(t, batch)
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be [B={batch}, L, text_dim={cfg.text_dim}], got {tuple(context.shape)}")

        tokens = F.conv3d(x.to(cd), self.patch_embedding.weight.to(cd), self.patch_embedding.bias.to(cd),
                          stride=cfg.patch_size)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        real_len = tokens.shape[1]
        seq_len = real_len if seq_len is None else seq_len
        if seq_len < real_len:
            raise ValueError(f"seq_len must be >= the {real_len} video tokens, got {seq_len}")
        tokens = F.pad(tokens, (0, 0, 0, seq_len - real_len))

        if t.ndim == 1:
            e, e0 = time_conditioning(t, self.time_embedding, self.time_projection, cfg.freq_dim)
        else:
            e, e0 = time_conditioning_per_token(token_timesteps(t, grid[1] * grid[2], seq_len),
                                                self.time_embedding, self.time_projection, cfg.freq_dim)
        text = pad_context(context, cfg.text_len)
        text = linear(F.gelu(linear(text, self.text_embedding[0], cd), approximate="tanh"), self.text_embedding[2], cd)
        image = image_features(clip_fea, cfg, batch)
        if image is not None:  # the image rows precede the text rows, as the official context
            text = torch.cat([self.img_emb(image, cd), text], dim=1)
        context = text

        rope_table = self.rope_table(grid, x.device)
        for block in self.blocks:
            tokens = block(tokens, e0, context, rope_table, real_len, cd)
        out = self.head(tokens, e)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_dim).float()
