"""Typed model configs and the named presets.

Every config is a frozen dataclass so it can key caches and be shared between threads. Dimensions
the checkpoints carry are inferred at load time (see `wan_engine.loading`); these presets hold the
published values and the toy-sized `tiny` preset that runs anywhere.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

# Per-channel statistics of the Wan2.1 VAE latent space (from the official release).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

# The same for the Wan2.2 VAE's 48 channels (`Wan2_2_VAE` in the official wan/modules/vae2_2.py).
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

WAN22_VAE_CHANNELS = len(WAN22_LATENT_MEAN)  # 48

NUM_TRAIN_TIMESTEPS = 1000  # the flow schedule's training timesteps (official num_train_timesteps)

# The official default negative prompt (Wan2.1 shared_config.sample_neg_prompt).
WAN21_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class DiTConfig:
    """The Wan diffusion transformer (`WanModel`)."""

    model_type: str = "t2v"  # "t2v" | "i2v" | "flf2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    text_len: int = 512
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # i2v/flf2v: width and rows per image of the CLIP features `img_emb` consumes (ViT-H/14's
    # penultimate block: 257 x 1280; flf2v's `emb_pos` holds two images' rows).
    image_dim: int = 1280
    image_tokens: int = 257
    # i2v: whether the blocks also cross-attend to CLIP image features (Wan2.1's `img_emb`, `k_img`);
    # False for Wan2.2's I2V-A14B, conditioned by the masked image latents `y` alone.
    clip: bool = True

    def __post_init__(self):
        if self.model_type not in ("t2v", "i2v", "flf2v"):
            raise ValueError(f"model_type must be one of t2v, i2v, flf2v; got {self.model_type!r}")
        if not self.clip and self.model_type != "i2v":
            raise ValueError(f"clip=False (conditioning by the latents alone) is for i2v models; got {self.model_type!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def task(self) -> str:
        """What a request conditions on: "t2v" (text), "i2v" / "flf2v" (a first / a first and a
        last frame), or "ti2v" (text, and optionally a first frame): a t2v DiT on the Wan2.2 VAE's
        48 latent channels (TI2V-5B), whose latent frame 0 an image's latents replace."""
        if self.model_type == "t2v" and self.out_dim == WAN22_VAE_CHANNELS:
            return "ti2v"
        return self.model_type

    @property
    def uses_clip(self) -> bool:
        """The model takes CLIP features of its image(s) (Wan2.1 i2v/flf2v): `img_emb` and image K/V."""
        return self.model_type != "t2v" and self.clip


@dataclass(frozen=True)
class VAEConfig:
    """The Wan 3D causal VAE: Wan2.1's `WanVAE_` by default, Wan2.2's (TI2V-5B) with `residual`.

    Wan2.2's VAE (`WAN22_VAE`) folds 2x2 pixels into channels first (`patch_size` 2), adds a
    parameter-free shortcut around every encoder and decoder stage (`residual`: average-pooling
    down, channel duplication up), keeps the width through its upsamples, and has a wider decoder
    (`decoder_base_dim`) than encoder.
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN21_LATENT_STD
    decoder_base_dim: int | None = None  # None: base_dim (Wan2.1)
    patch_size: int = 1  # pixels folded into channels per side before the encoder (Wan2.2: 2)
    residual: bool = False  # Wan2.2's stage shortcuts

    def __post_init__(self):
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"latent_mean/latent_std need z_dim={self.z_dim} entries")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temporal_downsample needs len(dim_mult) - 1 entries")
        if self.patch_size not in (1, 2):
            raise ValueError(f"patch_size must be 1 or 2; got {self.patch_size!r}")
        if self.residual and self.attn_scales:
            raise ValueError("the residual (Wan2.2) VAE has no attention inside its stages; attn_scales must be empty")

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent cell per side: the stages' downsampling times the patch."""
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size


# The Wan2.2 VAE of TI2V-5B (`Wan2.2_VAE.pth`): 48 latent channels, 4x16x16 compression.
WAN22_VAE = VAEConfig(base_dim=160, z_dim=48, latent_mean=WAN22_LATENT_MEAN, latent_std=WAN22_LATENT_STD,
                      decoder_base_dim=256, patch_size=2, residual=True)


def size_multiple(spatial_stride: int, patch_size: tuple[int, int, int]) -> int:
    """What a video's sides must be multiples of, in pixels: a VAE's `spatial_stride` times the
    DiT's (frames, height, width) `patch_size` on each side."""
    return math.lcm(*(spatial_stride * p for p in patch_size[1:]))


def latent_strides(z_dim: int) -> tuple[int, int]:
    """(frames, pixels per side) per latent cell for latents of `z_dim` channels: the Wan2.1 VAE's
    (4, 8) for 16, the Wan2.2 VAE's (4, 16) for 48 (a DiT's channels name its VAE)."""
    vae = WAN22_VAE if z_dim == len(WAN22_LATENT_MEAN) else VAEConfig()
    return vae.temporal_stride, vae.spatial_stride


@dataclass(frozen=True)
class T5Config:
    """The umT5 encoder (maps onto transformers' `UMT5Config`)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    text_len: int = 512
    eps: float = 1e-6


@dataclass(frozen=True)
class ImageEncoderConfig:
    """The CLIP visual tower Wan's I2V/FLF2V models condition on: open_clip's
    `xlm-roberta-large-vit-huge-14` (ViT-H/14). Wan reads the output of its penultimate block."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_dim: int = 5120
    num_heads: int = 16
    num_layers: int = 32
    eps: float = 1e-5
    # open_clip / OpenAI CLIP normalization of the [0, 1] image
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (the features come from the penultimate block), got {self.num_layers}")

    @property
    def tokens(self) -> int:
        """Feature rows per image: the class token and one per patch (257 for ViT-H/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class SampleDefaults:
    steps: int = 50
    shift: float = 5.0
    guidance: float = 5.0  # every step; with two experts, the high-noise expert's steps
    # Two-expert models (Wan2.2 A14B): the guidance of the low-noise expert's steps (None: one DiT).
    low_noise_guidance: float | None = None
    size: tuple[int, int] = (832, 480)  # (width, height)
    num_frames: int = 81
    solver: str = "unipc"
    negative_prompt: str = WAN21_NEGATIVE_PROMPT
    fps: int = 16  # of the written MP4: Wan2.1's and A14B's 16, TI2V-5B's 24 (official sample_fps)


@dataclass(frozen=True)
class ExpertSplit:
    """Wan2.2's two-expert (MoE) denoising: two DiTs of one architecture, the high-noise expert
    running the steps whose timestep is at or above `boundary` x 1000 (the official `boundary`,
    diffusers' `boundary_ratio`), the low-noise expert the rest."""

    boundary: float

    def __post_init__(self):
        if not (isinstance(self.boundary, (int, float)) and 0.0 < self.boundary < 1.0):
            raise ValueError(f"boundary must be a number in (0, 1), got {self.boundary!r}")

    @property
    def boundary_timestep(self) -> float:
        return self.boundary * NUM_TRAIN_TIMESTEPS

    def first_low_noise_step(self, timesteps) -> int:
        """The index of the first step the low-noise expert runs: the first timestep below the
        boundary (the official `t >= boundary` picks the high-noise one); len(timesteps) if none."""
        for i, t in enumerate(timesteps):
            if float(t) < self.boundary_timestep:
                return i
        return len(timesteps)


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: DiT, VAE, text encoder and sampling defaults."""

    name: str
    dit: DiTConfig
    vae: VAEConfig = field(default_factory=VAEConfig)
    t5: T5Config = field(default_factory=T5Config)
    sample: SampleDefaults = field(default_factory=SampleDefaults)
    # i2v/flf2v: the CLIP visual tower (None for t2v models)
    image_encoder: ImageEncoderConfig | None = None
    # Embedded weights: a folder in the official layout, relative to the wan_engine package
    # (None: the preset builds seeded random weights).
    weights: str | None = None
    # Wan2.2 A14B: a second, low-noise DiT of the same architecture takes over below the boundary.
    experts: ExpertSplit | None = None

    def __post_init__(self):
        if self.dit.out_dim != self.vae.z_dim:
            raise ValueError(f"model {self.name!r}: the DiT predicts {self.dit.out_dim} latent channels, the VAE "
                             f"has {self.vae.z_dim}")
        if (self.experts is None) != (self.sample.low_noise_guidance is None):
            raise ValueError(f"model {self.name!r}: a two-expert model needs sample.low_noise_guidance, "
                             f"a one-DiT model takes none")
        if self.experts is not None and self.dit.uses_clip:
            raise ValueError(f"model {self.name!r}: two-expert models condition on the latents alone (Wan2.2 "
                             f"I2V-A14B has no CLIP); a {self.dit.model_type} DiT with CLIP features has one expert")

    @property
    def size_multiple(self) -> int:
        """What a video's width and height must be multiples of, in pixels: the VAE's spatial stride
        times the DiT's patch (16 for Wan2.1's VAE, 32 for TI2V-5B's Wan2.2 VAE)."""
        return size_multiple(self.vae.spatial_stride, self.dit.patch_size)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


_T2V_1_3B = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
_T2V_14B = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# I2V/FLF2V: 16 noise + 4 mask + 16 image-latent input channels.
_I2V_14B = dataclasses.replace(_T2V_14B, model_type="i2v", in_dim=36)
_FLF2V_14B = dataclasses.replace(_T2V_14B, model_type="flf2v", in_dim=36)
# Official generate.py defaults: i2v 40 steps, shift 3.0 at 480p and 5.0 at 720p; flf2v keeps the
# 50 steps of the non-i2v tasks with shift 16 and prefixes its negative prompt with "镜头切换，"
# (wan/configs/__init__.py); guidance 5.0 for all.
_I2V_480P = SampleDefaults(steps=40, shift=3.0, size=(832, 480))
_I2V_720P = SampleDefaults(steps=40, shift=5.0, size=(1280, 720))
_FLF2V = SampleDefaults(steps=50, shift=16.0, size=(1280, 720), negative_prompt="镜头切换，" + WAN21_NEGATIVE_PROMPT)

# Wan2.2 T2V-A14B (wan/configs/wan_t2v_A14B.py, generate.py): two Wan2.1-14B-shaped experts,
# boundary 0.875, sample_guide_scale (3.0 low noise, 4.0 high noise), shift 12, 40 steps, 1280x720.
_T2V_A14B = SampleDefaults(steps=40, shift=12.0, guidance=4.0, low_noise_guidance=3.0, size=(1280, 720))
_T2V_A14B_SPLIT = ExpertSplit(boundary=0.875)
# Wan2.2 I2V-A14B (wan/configs/wan_i2v_A14B.py): the 14B i2v DiT (36 input channels) without CLIP,
# boundary 0.900, sample_guide_scale (3.5, 3.5), shift 5, 40 steps; 1280x720 is the area (max_area).
_I2V_A14B_DIT = dataclasses.replace(_I2V_14B, clip=False)
_I2V_A14B = SampleDefaults(steps=40, shift=5.0, guidance=3.5, low_noise_guidance=3.5, size=(1280, 720))
_I2V_A14B_SPLIT = ExpertSplit(boundary=0.900)

# Wan2.2 TI2V-5B (wan/configs/wan_ti2v_5B.py): a t2v-shaped DiT on the Wan2.2 VAE's 48 latent
# channels (4x16x16 compression); 50 steps, shift 5, guidance 5, 121 frames at 1280x704, 24 fps.
_TI2V_5B_DIT = DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48)
_TI2V_5B = SampleDefaults(steps=50, shift=5.0, guidance=5.0, size=(1280, 704), num_frames=121, fps=24)

# Toy-sized but architecturally complete: every code path of the real model runs.
# head_dim 16 keeps the attention backends that need a multiple of 8 usable.
TINY_T5 = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
TINY_DIT = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, freq_dim=256)
TINY_VAE = VAEConfig(base_dim=8)
# The Wan2.2 VAE's architecture (48 latent channels, 2x2 patch, stage shortcuts) at toy width.
TINY_VAE22 = dataclasses.replace(WAN22_VAE, base_dim=8, decoder_base_dim=12)
# A toy CLIP tower (17 rows per image) and the tiny DiT conditioned on it. head_dim 80 as ViT-H/14's,
# so that the head count of an official-layout file (which carries no config) is inferable.
TINY_IMAGE_ENCODER = ImageEncoderConfig(image_size=56, patch_size=14, dim=160, mlp_dim=320, num_heads=2, num_layers=3)
_TINY_IMAGE = dict(in_dim=36, image_dim=TINY_IMAGE_ENCODER.dim, image_tokens=TINY_IMAGE_ENCODER.tokens)

# The `shapes` model (wan_engine/shapes): the real architecture at toy size, trained on the CPU
# on the shapes world (scripts/train_shapes.py). 4 heads so that Ulysses 2 and 4 divide them; a
# 16-token text_len holds the world's captions (10 tokens in its word-level tokenizer).
SHAPES_T5 = dataclasses.replace(TINY_T5, text_len=16)
SHAPES_DIT = DiTConfig(dim=192, ffn_dim=768, num_heads=4, num_layers=5, text_dim=32, text_len=16, freq_dim=256)
SHAPES_VAE = VAEConfig(base_dim=16, num_res_blocks=1)
SHAPES_SHIFT = 5.0  # training draws sigmas from this shifted schedule; sampling uses the same (Wan's T2V shift)

PRESETS: dict[str, ModelConfig] = {
    # Official generate.py defaults (shift 5, guidance 5); its README suggests shift 8 / guide 6 for 1.3B.
    "t2v-1.3B": ModelConfig("t2v-1.3B", _T2V_1_3B),
    "t2v-14B": ModelConfig("t2v-14B", _T2V_14B),
    "tiny": ModelConfig(
        "tiny", TINY_DIT, TINY_VAE, TINY_T5,
        SampleDefaults(steps=8, size=(64, 64), num_frames=9),
    ),
    "t2v-A14B": ModelConfig("t2v-A14B", _T2V_14B, sample=_T2V_A14B, experts=_T2V_A14B_SPLIT),
    # The tiny DiT as two experts, with the A14B boundary and guidances (8 steps at shift 5: 4 high-noise ones).
    "tiny-a14b": ModelConfig(
        "tiny-a14b", TINY_DIT, TINY_VAE, TINY_T5,
        SampleDefaults(steps=8, guidance=4.0, low_noise_guidance=3.0, size=(64, 64), num_frames=9),
        experts=_T2V_A14B_SPLIT,
    ),
    "i2v-A14B": ModelConfig("i2v-A14B", _I2V_A14B_DIT, sample=_I2V_A14B, experts=_I2V_A14B_SPLIT),
    # Its low-noise guidance (2.5, not I2V-A14B's 3.5) lets tests tell the two experts' guidances apart.
    "tiny-i2v-a14b": ModelConfig(
        "tiny-i2v-a14b", dataclasses.replace(TINY_DIT, model_type="i2v", in_dim=36, clip=False), TINY_VAE, TINY_T5,
        SampleDefaults(steps=8, guidance=3.5, low_noise_guidance=2.5, size=(64, 64), num_frames=9),
        experts=_I2V_A14B_SPLIT,
    ),
    "ti2v-5B": ModelConfig("ti2v-5B", _TI2V_5B_DIT, WAN22_VAE, sample=_TI2V_5B),
    # The tiny DiT on the Wan2.2 VAE's latents (64x64 pixels are 4x4 latent cells, 2x2 tokens).
    "tiny-ti2v": ModelConfig(
        "tiny-ti2v", dataclasses.replace(TINY_DIT, in_dim=48, out_dim=48), TINY_VAE22, TINY_T5,
        SampleDefaults(steps=8, size=(64, 64), num_frames=9, fps=24),
    ),
    "i2v-14B-480p": ModelConfig("i2v-14B-480p", _I2V_14B, sample=_I2V_480P, image_encoder=ImageEncoderConfig()),
    "i2v-14B-720p": ModelConfig("i2v-14B-720p", _I2V_14B, sample=_I2V_720P, image_encoder=ImageEncoderConfig()),
    "flf2v-14B": ModelConfig("flf2v-14B", _FLF2V_14B, sample=_FLF2V, image_encoder=ImageEncoderConfig()),
    "tiny-i2v": ModelConfig(
        "tiny-i2v", dataclasses.replace(TINY_DIT, model_type="i2v", **_TINY_IMAGE), TINY_VAE, TINY_T5,
        SampleDefaults(steps=8, size=(64, 64), num_frames=9), image_encoder=TINY_IMAGE_ENCODER,
    ),
    "tiny-flf2v": ModelConfig(
        "tiny-flf2v", dataclasses.replace(TINY_DIT, model_type="flf2v", **_TINY_IMAGE), TINY_VAE, TINY_T5,
        SampleDefaults(steps=8, size=(64, 64), num_frames=9), image_encoder=TINY_IMAGE_ENCODER,
    ),
    # An empty negative prompt: the caption dropout in training used the empty caption.
    "shapes": ModelConfig(
        "shapes", SHAPES_DIT, SHAPES_VAE, SHAPES_T5,
        SampleDefaults(steps=25, shift=SHAPES_SHIFT, guidance=5.0, size=(96, 96), num_frames=17, negative_prompt=""),
        weights="shapes/weights",
    ),
    # `shapes` as two Wan2.2 experts (wan_engine/shapes/experts.py): the shipped DiT fine-tuned on
    # each side of T2V-A14B's boundary. At shift 5 and 25 steps the high-noise expert runs the first 11.
    # Both guidances stay the shapes model's 5 (it was trained with them); the DiTs ship in bf16.
    "shapes-a14b": ModelConfig(
        "shapes-a14b", SHAPES_DIT, SHAPES_VAE, SHAPES_T5,
        SampleDefaults(steps=25, shift=SHAPES_SHIFT, guidance=5.0, low_noise_guidance=5.0, size=(96, 96),
                       num_frames=17, negative_prompt=""),
        weights="shapes/weights_a14b", experts=_T2V_A14B_SPLIT,
    ),
}


# The presets trained on the shapes world (real weights: their videos can be scored for adherence).
SHAPES_PRESETS = ("shapes", "shapes-a14b")


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def preset_for(dit_dim: int, task: str, folder_name: str = "", experts: bool = False) -> ModelConfig | None:
    """The published preset whose DiT matches (width and `DiTConfig.task`), for sampling defaults
    and display names; `experts`:
    a two-expert (Wan2.2 A14B) model. The I2V 480p and 720p checkpoints share one architecture:
    the folder's name picks (as the official Wan2.1-I2V-14B-720P), else the first (480p)."""
    matches = [p for p in PRESETS.values()
               if p.dit.dim == dit_dim and p.dit.task == task and (p.experts is not None) == experts]
    for preset in matches:
        resolution = preset.name.rsplit("-", 1)[-1]
        if resolution in ("480p", "720p") and resolution in folder_name.lower():
            return preset
    return matches[0] if matches else None
