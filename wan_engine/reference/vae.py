"""The Wan 3D causal VAE (official `WanVAE_`), eager reference: Wan2.1's, and Wan2.2's (TI2V-5B)
when `config.residual` (see `vae_stages`).

`WanVAE(config).state_dict()` has the names and shapes of `Wan2.1_VAE.pth` (encoder.*, conv1,
conv2, decoder.*), or of `Wan2.2_VAE.pth` for `WAN22_VAE`, so the official checkpoints load directly. Official math: video [-1, 1] ->
encoder (2*z_dim channels) -> conv1 -> the mean half -> (mu - latent_mean) / latent_std; decode
undoes the normalization, conv2 -> decoder -> clamp to [-1, 1].

Chunked execution (default) is the official schedule: encode frame 0 alone, then 4 frames at a
time; decode one latent frame at a time; a `FeatureCache` carries the causal history between
chunks. `chunked=False` runs the whole clip in one pass and computes the same function (see
`vae_blocks` for how temporal resampling is defined on the whole clip); it holds every frame's
activations at once, so it is meant for tests and short clips, not 81 frames at 720p.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from wan_engine.configs import VAEConfig
from wan_engine.reference.vae_blocks import (
    AttentionBlock,
    CausalConv3d,
    FeatureCache,
    Resample,
    ResidualBlock,
    RMSNorm,
    apply_layers,
)
from wan_engine.reference.vae_stages import DownStage, UpStage, patchify, unpatchify

ENCODE_CHUNK_FRAMES = 4  # after the lone frame 0; one latent frame per chunk at temporal stride 4


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> [B, out_channels, 1 + (T-1)/ts, H/ss, W/ss] (ts, ss: strides)."""

    def __init__(self, config: VAEConfig, out_channels: int) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        last_stage = len(config.dim_mult) - 1
        self.patch = config.patch_size
        self.conv1 = CausalConv3d(3 * self.patch ** 2, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        scale = 1.0
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if config.residual:  # Wan2.2: one module per stage, with its shortcut
                temporal = stage != last_stage and config.temporal_downsample[stage]
                layers.append(DownStage(in_dim, out_dim, config.num_res_blocks, temporal, stage != last_stage))
                continue
            for _ in range(config.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                if scale in config.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if stage != last_stage:
                temporal = config.temporal_downsample[stage]
                layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x = self.conv1(patchify(x, self.patch), cache)
        x = apply_layers(self.downsamples, x, cache)
        x = apply_layers(self.middle, x, cache)
        return apply_layers(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T, h, w] -> video [B, 3, 1 + (T-1)*ts, h*ss, w*ss] (unclamped)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        mult = config.dim_mult
        dims = [config.decoder_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = config.temporal_downsample[::-1]
        last_stage = len(mult) - 1
        self.patch = config.patch_size
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        layers: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(mult) - 2)
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if config.residual:  # Wan2.2: one module per stage, with its shortcut; no halving
                temporal = stage != last_stage and temporal_upsample[stage]
                layers.append(UpStage(in_dim, out_dim, config.num_res_blocks + 1, temporal, stage != last_stage))
                continue
            if stage > 0:  # the previous stage's Resample halved the channels
                in_dim //= 2
            # One more residual block per stage than the encoder, as official.
            for _ in range(config.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                if scale in config.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if stage != last_stage:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[stage] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], 3 * self.patch ** 2, 3, padding=1))

    def trunk(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """conv1 and the middle block: at latent resolution, attention over the whole frame."""
        return apply_layers(self.middle, self.conv1(x, cache), cache)

    def tail(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """The upsampling stages and the head (local convolutions only), then the pixel patch undone."""
        x = apply_layers(self.head, apply_layers(self.upsamples, x, cache), cache)
        return unpatchify(x, self.patch)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return self.tail(self.trunk(x, cache), cache)


def encode_chunks(video: torch.Tensor) -> Iterator[torch.Tensor]:
    """The official encode schedule: frame 0 alone, then chunks of 4 frames. video: [B, C, T, H, W]."""
    yield video[:, :, :1]
    for start in range(1, video.shape[2], ENCODE_CHUNK_FRAMES):
        yield video[:, :, start:start + ENCODE_CHUNK_FRAMES]


class WanVAE(nn.Module):
    """The official `WanVAE_` plus the latent normalization of the official `WanVAE` wrapper."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        config = VAEConfig() if config is None else config
        if ENCODE_CHUNK_FRAMES % config.temporal_stride:
            raise ValueError(f"config.temporal_downsample gives temporal stride {config.temporal_stride}; "
                             f"the official 4-frame encode chunks need a stride of 1, 2 or 4")
        self.config = config
        self.encoder = Encoder3d(config, out_channels=2 * config.z_dim)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    # -- validation ---------------------------------------------------------------------------
    def _check_spatial(self, name: str, shape: torch.Size, channels: int, stride: int) -> None:
        if len(shape) != 5 or shape[1] != channels:
            raise ValueError(f"{name} must have shape [B, {channels}, F, H, W]; got {tuple(shape)}")
        for axis, size in (("H", shape[3]), ("W", shape[4])):
            if size < 1 or size % stride:
                raise ValueError(f"{name}: {axis} must be a positive multiple of {stride}; got {size}")

    def _check_video(self, video: torch.Tensor) -> None:
        self._check_spatial("video", video.shape, 3, self.config.spatial_stride)
        frames = video.shape[2]
        if frames < 1 or (frames - 1) % ENCODE_CHUNK_FRAMES:
            raise ValueError(f"video: frame count F must be 4n+1 (1, 5, 9, ..., 81); got {frames}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        self._check_spatial("latents", latents.shape, self.config.z_dim, 1)
        if latents.shape[2] < 1:
            raise ValueError("latents: need at least one latent frame")

    # -- latent normalization -------------------------------------------------------------------
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latent_mean, dtype=like.dtype, device=like.device).view(shape)
        inv_std = 1.0 / torch.tensor(self.config.latent_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, inv_std

    def normalize_latents(self, mu: torch.Tensor) -> torch.Tensor:
        """Official: (mu - mean) * (1/std), the reciprocal taken first."""
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Official: z / (1/std) + mean."""
        mean, inv_std = self._stats(latents)
        return latents / inv_std + mean

    # -- encode / decode ------------------------------------------------------------------------
    def encode_mean(self, video: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
        """Posterior mean before normalization. video: [B, 3, F, H, W], F = 4n+1, H, W % 8 == 0
        -> [B, z_dim, (F-1)//4 + 1, H/8, W/8] (strides of the default config)."""
        self._check_video(video)
        if chunked:
            cache = FeatureCache()
            features = torch.cat([self.encoder(chunk, cache) for chunk in encode_chunks(video)], dim=2)
        else:
            features = self.encoder(video)
        return self.conv1(features)[:, : self.config.z_dim]

    def encode(self, video: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
        """video: [B, 3, F, H, W] in [-1, 1] -> normalized latents [B, z_dim, (F-1)//4+1, H/8, W/8]."""
        return self.normalize_latents(self.encode_mean(video, chunked=chunked))

    def decode_raw(self, mu: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
        """Unnormalized latents [B, z_dim, f, h, w] -> unclamped video [B, 3, 4*(f-1)+1, 8h, 8w]."""
        self._check_latents(mu)
        x = self.conv2(mu)
        if not chunked:
            return self.decoder(x)
        cache = FeatureCache()
        return torch.cat([self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])], dim=2)

    def decode(self, latents: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
        """Normalized latents [B, z_dim, f, h, w] -> video [B, 3, 4*(f-1)+1, 8h, 8w] in [-1, 1]."""
        self._check_latents(latents)
        return self.decode_raw(self.denormalize_latents(latents), chunked=chunked).clamp(-1.0, 1.0)
