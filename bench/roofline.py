"""Analytic FLOP and byte model of one Wan DiT forward and of the VAE encode/decode (no model run).

Conventions, so that measured times turn into honest TFLOP/s and GB/s:
- FLOPs count multiply and add separately (a GEMM [M,K]x[K,N] is 2*M*K*N). Attention is its two
  GEMMs only, 4*Sq*Sk*dim (softmax exps are not FLOPs in this count, as in the flash-attention
  papers). Norms, RoPE, activations and residuals get a few FLOPs per element (constants below);
  they matter for bytes, not for FLOPs.
- Bytes are the compulsory HBM traffic of a well-fused implementation: each GEMM reads its input
  and weights once and writes its output once; attention reads q, k, v and writes o once (the
  flash-attention minimum; K/V re-reads across query tiles hit L2 and are not counted); each
  elementwise op reads its inputs and writes its outputs once. Weights are read once per forward
  (shared by the batch). The floor `max(flops/peak, bytes/bandwidth)` is therefore a lower
  bound on time, not a prediction.
- DiT dtypes follow the official numerics: GEMM operands/outputs and attention in `dtype_bytes`
  (bf16: 2), the residual stream, modulation, time embedding and head in fp32.
- Tokens follow the official rule: latent (F-1)//4+1 x H/8 x W/8, patch (1,2,2), i.e. 81 frames at
  832x480 -> 21*30*52 = 32,760 tokens. Cross-attention attends to text_len (512) text tokens, plus
  257 CLIP tokens for i2v (514 for flf2v).
- VAE: every Conv3d/Conv2d of the official graph at the resolution and frame count it runs at
  (encode: frame 0 alone then 4-frame chunks; decode: one latent frame per chunk, the first chunk
  skips the temporal up/downsampling convs), the single-head mid-block attention per frame, and
  RMS_norm+SiLU/residual traffic. Causal-cache context frames add read traffic ((kt-1) frames per
  chunk), and weights are re-read once per chunk. Defaults to fp32 (the official VAE dtype).

CLI: python -m wan_engine.bench.roofline --preset t2v-1.3B --size 832x480 --frames 81
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Mapping

from wan_engine.configs import PRESETS, DiTConfig, VAEConfig

VAE_STRIDE = (4, 8, 8)   # (t, h, w) of the Wan2.1 VAE: latent (F-1)//4+1 x H/8 x W/8
CLIP_TOKENS = 257        # CLIP ViT-H/14 image tokens per conditioning image
CLIP_DIM = 1280
RESIDUAL_BYTES = 4       # the official residual stream / modulation / head are fp32
ENCODE_CHUNK_FRAMES = 4  # official encode: frame 0, then chunks of 4 frames

# FLOPs per element of the small ops (rough counts; these are < 1% of the DiT total).
LAYERNORM_MODULATE_FLOPS = 8  # mean, variance, normalise, (1+scale)*x + shift
RMSNORM_FLOPS = 4             # square, reduce, rescale, weight
ROPE_FLOPS = 3                # one complex multiply (6 FLOPs) per pair of elements
GELU_TANH_FLOPS = 10
RESIDUAL_FLOPS = 2            # x + y * gate
NORM_SILU_FLOPS = 8           # VAE RMS_norm + SiLU


# --------------------------------------------------------------------------------------------
# Cost records
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComponentCost:
    name: str
    flops: float
    bytes: float
    detail: str = ""


@dataclass(frozen=True)
class Cost:
    """A breakdown of FLOPs and bytes by component, with totals."""

    label: str
    components: tuple[ComponentCost, ...]

    @property
    def flops(self) -> float:
        return sum(c.flops for c in self.components)

    @property
    def bytes(self) -> float:
        return sum(c.bytes for c in self.components)

    @property
    def intensity(self) -> float:
        """FLOPs per byte of the whole workload."""
        return self.flops / self.bytes if self.bytes else math.inf

    def component(self, name: str) -> ComponentCost:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no component {name!r}; have {[c.name for c in self.components]}")

    def __getitem__(self, name: str) -> ComponentCost:
        return self.component(name)


class _Tally:
    """Accumulates FLOPs and bytes per component name, keeping first-seen order."""

    def __init__(self) -> None:
        self._parts: dict[str, list] = {}

    def add(self, name: str, flops: float = 0.0, nbytes: float = 0.0, detail: str = "") -> None:
        part = self._parts.setdefault(name, [0.0, 0.0, detail])
        part[0] += flops
        part[1] += nbytes

    def cost(self, label: str) -> Cost:
        # Small elementwise ops go last, after the compute path in graph order.
        names = sorted(self._parts, key=lambda n: n == "norm_elementwise")
        return Cost(label, tuple(ComponentCost(n, *self._parts[n]) for n in names))


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def latent_shape(width: int, height: int, frames: int, vae_stride: tuple[int, int, int] = VAE_STRIDE
                 ) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) by the official rule (F-1)//st+1, H/sh, W/sw."""
    for name, value in (("width", width), ("height", height), ("frames", frames)):
        _positive_int(name, value)
    st, sh, sw = vae_stride
    if (frames - 1) % st:
        raise ValueError(f"frames must be {st}n+1 (1, {1 + st}, {1 + 2 * st}, ...), got {frames}")
    if height % sh or width % sw:
        raise ValueError(f"width/height must be multiples of {sw}/{sh}, got {width}x{height}")
    return (frames - 1) // st + 1, height // sh, width // sw


def dit_tokens(cfg: DiTConfig, width: int, height: int, frames: int,
               vae_stride: tuple[int, int, int] = VAE_STRIDE) -> int:
    """Video tokens per sample: 81 frames at 832x480 on the (1,2,2) patch -> 32,760."""
    lf, lh, lw = latent_shape(width, height, frames, vae_stride)
    pt, ph, pw = cfg.patch_size
    if lf % pt or lh % ph or lw % pw:
        raise ValueError(f"latent {lf}x{lh}x{lw} is not divisible by the patch {cfg.patch_size}; "
                         f"width/height must be multiples of {vae_stride[2] * pw}/{vae_stride[1] * ph}")
    return (lf // pt) * (lh // ph) * (lw // pw)


def image_tokens(cfg: DiTConfig) -> int:
    if not cfg.uses_clip:
        return 0
    return {"i2v": CLIP_TOKENS, "flf2v": 2 * CLIP_TOKENS}[cfg.model_type]


# --------------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------------

def dit_forward_cost(cfg: DiTConfig, width: int, height: int, frames: int, batch: int = 1,
                     dtype_bytes: float = 2, vae_stride: tuple[int, int, int] = VAE_STRIDE,
                     fused_gelu: bool = False) -> Cost:
    """FLOPs and bytes of one DiT forward on `batch` samples of a width x height x frames video.

    fused_gelu: the FFN's GELU runs in the first GEMM's epilogue (the executor on CUDA), so its
    separate read and write of the [B, S, ffn_dim] activation drop out of the byte count.

    Components: self_attn (scores+PV), self_attn_proj (fused QKV + O), cross_attn (scores+PV over
    text [+ image] tokens), cross_attn_proj (Q, K/V of the context, O), ffn, embed_head (patch,
    text, time and image embeddings, head), norm_elementwise (norms, RoPE, GELU, residuals).
    """
    _positive_int("batch", batch)
    if not dtype_bytes > 0:
        raise ValueError(f"dtype_bytes must be > 0, got {dtype_bytes}")
    s = dit_tokens(cfg, width, height, frames, vae_stride)
    b, d, f, layers, a, r = batch, cfg.dim, cfg.ffn_dim, cfg.num_layers, dtype_bytes, RESIDUAL_BYTES
    t = cfg.text_len
    n_img = image_tokens(cfg)
    ctx = t + n_img  # context tokens that k/v projections and attention run over
    t_ = _Tally()

    # Per layer, then times num_layers.
    t_.add("self_attn", layers * 4 * b * s * s * d,
           layers * a * b * 4 * s * d, f"4*S^2*dim, S={s}")
    t_.add("self_attn_proj", layers * 2 * b * s * d * 4 * d,
           layers * a * (b * s * d * (1 + 3 + 1 + 1) + 4 * d * d + 4 * d), "QKV [dim->3dim] + O")
    t_.add("cross_attn", layers * 4 * b * s * ctx * d,
           layers * a * b * ((2 if n_img else 1) * 2 * s * d + 2 * ctx * d),
           f"4*S*{ctx}*dim" + (" (text + image)" if n_img else ""))
    kv_proj_weights = 2 * d * d * (2 if n_img else 1)
    t_.add("cross_attn_proj",
           layers * (2 * b * s * d * 2 * d + 2 * b * ctx * d * 2 * d),
           layers * a * (b * s * d * 4 + b * ctx * d * 3 + 2 * d * d + kv_proj_weights + 4 * d),
           "Q, O on video; K, V on context")
    t_.add("ffn", layers * 2 * b * s * d * f * 2,
           layers * a * (b * s * (d + f) * 2 + 2 * d * f + d + f), f"dim->{f}->dim")

    # Norms and elementwise ops per layer (bytes per element of [B, S, dim] unless noted).
    per_token_flops = (2 * LAYERNORM_MODULATE_FLOPS + LAYERNORM_MODULATE_FLOPS  # LN1, LN2, LN3
                       + 2 * (RMSNORM_FLOPS + ROPE_FLOPS) + RMSNORM_FLOPS      # q/k self, q cross
                       + 3 * RESIDUAL_FLOPS) * d + GELU_TANH_FLOPS * f
    per_token_bytes = (3 * (r + a)        # LN1, LN2, LN3: read fp32 x, write normed
                       + 4 * a            # q, k RMSNorm+RoPE: read + write each
                       + 2 * a            # cross-attn q RMSNorm
                       + 3 * (2 * r + a)  # three residual adds: read x and y, write x
                       + (n_img > 0) * 2 * a) * d  # i2v: add the two attn outputs
    if not fused_gelu:
        per_token_bytes += 2 * a * f  # a separate GELU pass reads and writes the FFN activation
    # k RMSNorm of the context tokens (text, and image for i2v/flf2v).
    ctx_norm_flops, ctx_norm_bytes = b * ctx * d * RMSNORM_FLOPS, b * ctx * d * 2 * a
    t_.add("norm_elementwise", layers * (b * s * per_token_flops + ctx_norm_flops),
           layers * (b * s * per_token_bytes + ctx_norm_bytes), "LN+modulate, q/k RMSNorm+RoPE, GELU, residuals")

    # Embeddings and head (once per forward).
    patch = math.prod(cfg.patch_size)
    embed_flops = (2 * b * s * cfg.in_dim * patch * d                       # patch embedding
                   + 2 * b * t * (cfg.text_dim * d + d * d)                  # text MLP
                   + 2 * b * (cfg.freq_dim * d + d * d + d * 6 * d)          # time MLP + projection
                   + 2 * b * s * d * patch * cfg.out_dim)                    # head linear
    embed_bytes = (a * (b * s * cfg.in_dim * patch + b * s * d + cfg.in_dim * patch * d)
                   + a * (b * t * (cfg.text_dim + 2 * d) + b * t * d + cfg.text_dim * d + d * d)
                   + r * (cfg.freq_dim * d + 7 * d * d)
                   + r * (b * s * d * 2 + b * s * patch * cfg.out_dim * 2 + d * patch * cfg.out_dim))
    if n_img:  # MLPProj: LN, Linear(1280,1280), GELU, Linear(1280,dim), LN
        embed_flops += 2 * b * n_img * (CLIP_DIM * CLIP_DIM + CLIP_DIM * d)
        embed_bytes += a * (b * n_img * (2 * CLIP_DIM + d) + CLIP_DIM * CLIP_DIM + CLIP_DIM * d)
    t_.add("embed_head", embed_flops, embed_bytes, "patch/text/time/image embeddings, head")

    label = (f"DiT forward: dim {d}, {layers} layers, {width}x{height}x{frames}, batch {b}, "
             f"{s} tokens, {a}-byte GEMMs")
    return t_.cost(label)


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

class _VAETally(_Tally):
    """Conv/attention/elementwise helpers over [B, C, T, H, W] activations."""

    def __init__(self, batch: int, nbytes: float):
        super().__init__()
        self.b, self.a = batch, nbytes

    def conv(self, name, cin, cout, kernel, t_out, h_out, w_out, h_in, w_in, chunks, t_in=None):
        kt, kh, kw = kernel
        t_in = t_out if t_in is None else t_in
        flops = 2 * self.b * cin * cout * kt * kh * kw * t_out * h_out * w_out
        # Causal-cache context: kt-1 extra frames read per chunk.
        frames_read = t_in + (kt - 1) * chunks
        nbytes = self.a * (self.b * (cin * frames_read * h_in * w_in + cout * t_out * h_out * w_out)
                           + chunks * (cin * cout * kt * kh * kw + cout))
        self.add(name, flops, nbytes)

    def elementwise(self, elements, flops_per, reads, writes):
        # One component for all of them (as in the DiT), so the others hold only conv/attention
        # GEMM FLOPs and can be checked against a FLOP counter.
        self.add("norm_elementwise", self.b * elements * flops_per,
                 self.a * self.b * elements * (reads + writes), "RMS_norm+SiLU, residuals, upsampling copies")

    def residual_block(self, name, cin, cout, t, h, w, chunks):
        self.elementwise(cin * t * h * w, NORM_SILU_FLOPS, 1, 1)
        self.conv(name, cin, cout, (3, 3, 3), t, h, w, h, w, chunks)
        self.elementwise(cout * t * h * w, NORM_SILU_FLOPS, 1, 1)
        self.conv(name, cout, cout, (3, 3, 3), t, h, w, h, w, chunks)
        if cin != cout:
            self.conv(name, cin, cout, (1, 1, 1), t, h, w, h, w, chunks)
        self.elementwise(cout * t * h * w, 1, 2, 1)

    def attention_block(self, name, c, t, h, w):
        """Single-head attention over the h*w positions of each frame (1x1 conv q/k/v and proj)."""
        n = h * w
        self.elementwise(c * t * n, RMSNORM_FLOPS, 1, 1)
        self.conv(name, c, 3 * c, (1, 1, 1), t, h, w, h, w, 1)
        self.add(name, 4 * self.b * t * n * n * c, self.a * self.b * t * 4 * n * c)
        self.conv(name, c, c, (1, 1, 1), t, h, w, h, w, 1)
        self.elementwise(c * t * n, 1, 2, 1)


def _vae_check(cfg: VAEConfig, width: int, height: int, frames: int, batch: int, dtype_bytes: float):
    _positive_int("batch", batch)
    if not dtype_bytes > 0:
        raise ValueError(f"dtype_bytes must be > 0, got {dtype_bytes}")
    stride = (cfg.temporal_stride, cfg.spatial_stride, cfg.spatial_stride)
    return latent_shape(width, height, frames, stride)


def vae_decode_cost(cfg: VAEConfig, width: int, height: int, frames: int, batch: int = 1,
                    dtype_bytes: float = 4) -> Cost:
    """FLOPs and bytes of decoding latents to a width x height x frames video.

    Components: conv_in, mid (res blocks), mid_attn, up{i}_res, up{i}_resample, head (convs and
    attention GEMMs only), norm_elementwise (norms, SiLU, residual adds, upsampling copies and,
    for the Wan2.2 VAE, its stage shortcuts and the pixel unpatchify).
    """
    lf, lh, lw = _vae_check(cfg, width, height, frames, batch, dtype_bytes)
    p = cfg.patch_size  # the Wan2.2 VAE's head gives p x p pixels per position (unpatchified)
    dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1],) + tuple(reversed(cfg.dim_mult))]
    temporal_up = tuple(reversed(cfg.temporal_downsample))
    n_stages = len(cfg.dim_mult)
    chunks = lf  # one latent frame per decoder call
    v = _VAETally(batch, dtype_bytes)
    t, h, w = lf, lh, lw

    v.conv("conv_in", cfg.z_dim, cfg.z_dim, (1, 1, 1), t, h, w, h, w, chunks)  # WanVAE_.conv2
    v.conv("conv_in", cfg.z_dim, dims[0], (3, 3, 3), t, h, w, h, w, chunks)
    v.residual_block("mid", dims[0], dims[0], t, h, w, chunks)
    v.attention_block("mid_attn", dims[0], t, h, w)
    v.residual_block("mid", dims[0], dims[0], t, h, w, chunks)
    scale = 1.0 / 2 ** (n_stages - 2)
    for i in range(n_stages):
        # Wan2.1's upsampling halves the channels; Wan2.2's keeps them.
        cin, cout = (dims[i] // 2 if i > 0 and not cfg.residual else dims[i]), dims[i + 1]
        stage_in = cin * t * h * w
        for _ in range(cfg.num_res_blocks + 1):
            v.residual_block(f"up{i}_res", cin, cout, t, h, w, chunks)
            if scale in cfg.attn_scales:
                v.attention_block(f"up{i}_res", cout, t, h, w)
            cin = cout
        if i == n_stages - 1:
            break
        name = f"up{i}_resample"
        if temporal_up[i]:
            # time_conv doubles channels, reshaped into two frames; the first chunk skips it.
            v.conv(name, cout, 2 * cout, (3, 1, 1), t - 1, h, w, h, w, chunks)
            t = 1 + 2 * (t - 1)
        v.elementwise(cout * t * h * w, 0, 1, 4)  # nearest-exact x2 upsampling copy
        v.conv(name, cout, cout if cfg.residual else cout // 2, (1, 3, 3), t, 2 * h, 2 * w, 2 * h, 2 * w, chunks)
        h, w, scale = 2 * h, 2 * w, scale * 2
        if cfg.residual:  # DupUp3D of the stage input (a read and a copy) added to the stage output
            v.elementwise(stage_in, 0, 1, cout * t * h * w / stage_in)
            v.elementwise(cout * t * h * w, 1, 2, 1)
    v.elementwise(dims[-1] * t * h * w, NORM_SILU_FLOPS, 1, 1)
    v.conv("head", dims[-1], 3 * p * p, (3, 3, 3), t, h, w, h, w, chunks)
    if p > 1:
        v.elementwise(3 * p * p * t * h * w, 0, 1, 1)  # unpatchify: one copy
    return v.cost(f"VAE decode: base {cfg.base_dim}, {width}x{height}x{frames}, batch {batch}, "
                  f"latent {lf}x{lh}x{lw}, {dtype_bytes}-byte activations")


def vae_encode_cost(cfg: VAEConfig, width: int, height: int, frames: int, batch: int = 1,
                    dtype_bytes: float = 4) -> Cost:
    """FLOPs and bytes of encoding a width x height x frames video to latents.

    Components: conv_in, down{i}_res, down{i}_resample, mid, mid_attn, head (convs and attention
    GEMMs only), norm_elementwise.
    """
    lf, lh, lw = _vae_check(cfg, width, height, frames, batch, dtype_bytes)
    dims = [cfg.base_dim * m for m in (1,) + tuple(cfg.dim_mult)]
    n_stages = len(cfg.dim_mult)
    chunks = 1 + (frames - 1) // ENCODE_CHUNK_FRAMES
    v = _VAETally(batch, dtype_bytes)
    p = cfg.patch_size
    t, h, w = frames, height // p, width // p
    if p > 1:
        v.elementwise(3 * frames * height * width, 0, 1, 1)  # patchify: one copy

    v.conv("conv_in", 3 * p * p, dims[0], (3, 3, 3), t, h, w, h, w, chunks)
    scale = 1.0
    for i in range(n_stages):
        cin, cout = dims[i], dims[i + 1]
        if cfg.residual:  # AvgDown3D of the stage input: read it once, write the stage's output size
            down = (2 if i < n_stages - 1 else 1) ** 2 * (2 if i < n_stages - 1 and cfg.temporal_downsample[i] else 1)
            v.elementwise(cin * t * h * w, 1, 1, cout / (cin * down))
        for _ in range(cfg.num_res_blocks):
            v.residual_block(f"down{i}_res", cin, cout, t, h, w, chunks)
            if scale in cfg.attn_scales:
                v.attention_block(f"down{i}_res", cout, t, h, w)
            cin = cout
        if i == n_stages - 1:
            break
        name = f"down{i}_resample"
        # Zero-pad (0,1,0,1) then a stride-2 3x3 conv per frame.
        v.conv(name, cout, cout, (1, 3, 3), t, h // 2, w // 2, h, w, chunks)
        h, w, scale = h // 2, w // 2, scale / 2
        if cfg.temporal_downsample[i]:
            # Stride-2 time conv over [last cached frame, chunk]; the first chunk skips it.
            t_out = (t - 1) // 2
            v.conv(name, cout, cout, (3, 1, 1), t_out, h, w, h, w, chunks, t_in=t - 1)
            t = 1 + t_out
    c = dims[-1]
    v.residual_block("mid", c, c, t, h, w, chunks)
    v.attention_block("mid_attn", c, t, h, w)
    v.residual_block("mid", c, c, t, h, w, chunks)
    v.elementwise(c * t * h * w, NORM_SILU_FLOPS, 1, 1)
    v.conv("head", c, 2 * cfg.z_dim, (3, 3, 3), t, h, w, h, w, chunks)
    v.conv("head", 2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), t, h, w, h, w, chunks)  # WanVAE_.conv1
    return v.cost(f"VAE encode: base {cfg.base_dim}, {width}x{height}x{frames}, batch {batch}, "
                  f"latent {lf}x{lh}x{lw}, {dtype_bytes}-byte activations")


# --------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceilings:
    """Measured (or datasheet) peaks of a card: dense bf16 matmul TFLOP/s and HBM GB/s."""

    bf16_tflops: float
    hbm_gbps: float

    def __post_init__(self):
        if not (self.bf16_tflops > 0 and self.hbm_gbps > 0):
            raise ValueError(f"ceilings must be positive, got {self.bf16_tflops} TFLOP/s, {self.hbm_gbps} GB/s")

    @classmethod
    def of(cls, ceilings: "Ceilings | Mapping[str, float]") -> "Ceilings":
        if isinstance(ceilings, Ceilings):
            return ceilings
        try:
            return cls(float(ceilings["bf16_tflops"]), float(ceilings["hbm_gbps"]))
        except KeyError as err:
            raise ValueError(f"ceilings need keys 'bf16_tflops' and 'hbm_gbps', missing {err}") from None


@dataclass(frozen=True)
class RooflinePoint:
    seconds: float
    tflops: float          # achieved FLOP rate
    gbps: float            # achieved byte rate
    floor_seconds: float   # max(flops/peak, bytes/bandwidth)
    pct_of_floor: float    # 100 * floor / measured: 100 means on the roofline
    bound: str             # "compute" or "memory": which term sets the floor


def floor_seconds(cost: Cost, ceilings: Ceilings | Mapping[str, float]) -> float:
    c = Ceilings.of(ceilings)
    return max(cost.flops / (c.bf16_tflops * 1e12), cost.bytes / (c.hbm_gbps * 1e9))


def roofline_point(seconds: float, cost: Cost, ceilings: Ceilings | Mapping[str, float]) -> RooflinePoint:
    """Effective TFLOP/s, GB/s and % of the roofline floor of a measured time for `cost`."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    c = Ceilings.of(ceilings)
    compute_s = cost.flops / (c.bf16_tflops * 1e12)
    memory_s = cost.bytes / (c.hbm_gbps * 1e9)
    floor = max(compute_s, memory_s)
    return RooflinePoint(seconds, cost.flops / seconds / 1e12, cost.bytes / seconds / 1e9, floor,
                         100.0 * floor / seconds, "compute" if compute_s >= memory_s else "memory")


def format_cost_table(cost: Cost, ceilings: Ceilings | Mapping[str, float] | None = None) -> str:
    """A terminal table: per component TFLOP, GB, FLOP/byte, share of FLOPs (and floor ms)."""
    c = Ceilings.of(ceilings) if ceilings is not None else None
    header = f"{'component':<18} {'TFLOP':>10} {'GB':>9} {'FLOP/B':>8} {'%FLOP':>6}"
    if c:
        header += f" {'floor ms':>9} {'bound':>7}"
    lines = [cost.label, header, "-" * len(header)]
    total_flops = cost.flops or 1.0
    rows = list(cost.components) + [ComponentCost("total", cost.flops, cost.bytes)]
    for i, comp in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(header))
        intensity = comp.flops / comp.bytes if comp.bytes else math.inf
        line = (f"{comp.name:<18} {comp.flops / 1e12:>10.3f} {comp.bytes / 1e9:>9.2f} "
                f"{intensity:>8.1f} {100 * comp.flops / total_flops:>6.1f}")
        if c:
            compute_s = comp.flops / (c.bf16_tflops * 1e12)
            memory_s = comp.bytes / (c.hbm_gbps * 1e9)
            line += f" {1e3 * max(compute_s, memory_s):>9.2f} {'compute' if compute_s >= memory_s else 'memory':>7}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Analytic FLOP/byte model of the Wan DiT and VAE")
    parser.add_argument("--preset", default="t2v-1.3B", choices=sorted(PRESETS))
    parser.add_argument("--size", default="832x480", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--batch", type=int, default=1, help="2 for CFG in one batch")
    parser.add_argument("--tflops", type=float, help="bf16 matmul ceiling, TFLOP/s")
    parser.add_argument("--gbps", type=float, help="HBM copy ceiling, GB/s")
    args = parser.parse_args(argv)
    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    ceilings = Ceilings(args.tflops, args.gbps) if args.tflops and args.gbps else None
    model = PRESETS[args.preset]
    for cost in (dit_forward_cost(model.dit, width, height, args.frames, args.batch),
                 vae_decode_cost(model.vae, width, height, args.frames, args.batch),
                 vae_encode_cost(model.vae, width, height, args.frames, args.batch)):
        print(format_cost_table(cost, ceilings), end="\n\n")


if __name__ == "__main__":
    main()
