"""Building blocks of the Wan2.1 3D causal VAE, with the official parameter names and math.

Every temporal operation runs in one of two modes, chosen by the `cache` argument:

- `cache=None` (whole clip): the input holds every frame of the clip; causal convolutions zero-pad
  the past.
- `cache=FeatureCache()` (streaming): the input is the next chunk of a clip; each temporal op keeps
  what it needs from earlier chunks in the cache (the official `feat_cache`), so that a loop over
  chunks sharing one cache computes what the whole-clip pass computes.

The official code only resamples in time on its chunked path, with two quirks that the whole-clip
mode reproduces by construction (see `Resample`): frame 0 never enters a temporal resampling conv,
and the first temporal upsample sees zeros, not frame 0, as its past. Per-frame ops (RMS norm,
attention, 2-D resampling) are the same in both modes.

Parameter names follow `wan/modules/vae.py` so `Wan2.1_VAE.pth` loads without renaming:
`residual.{0,2,3,6}`, `shortcut`, `resample.1`, `time_conv`, `norm`, `to_qkv`, `proj`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESAMPLE_MODES = ("none", "upsample2d", "upsample3d", "downsample2d", "downsample3d")


class FeatureCache:
    """Streaming state of one encode or decode call (the official `feat_cache`, made per call).

    Maps each temporal module to what it remembers from the chunks already seen: the last input
    frames of a causal conv, the last frame before a temporal downsample, or a marker that a
    temporal upsample has seen its first chunk. Keyed by module identity, so no call-order
    bookkeeping is needed and two calls never share state.
    """

    def __init__(self) -> None:
        self._state: dict[int, object] = {}

    def get(self, module: nn.Module):
        return self._state.get(id(module))

    def put(self, module: nn.Module, value) -> None:
        self._state[id(module)] = value

    def __contains__(self, module: nn.Module) -> bool:
        return id(module) in self._state


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads time only in front (2*p_t frames), so output frame t sees inputs <= t.

    Spatial padding is symmetric as in nn.Conv3d. In streaming mode the 2*p_t zero frames are
    replaced by the last 2*p_t input frames of earlier chunks (official CACHE_T = 2 for the
    kernel-3 convs; kernel-1 convs keep no history).
    """

    streaming = True  # takes the cache (see apply_layers)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pad_t, pad_h, pad_w = self.padding
        self.history_frames = 2 * pad_t
        self._spatial_pad = (pad_w, pad_w, pad_h, pad_h)
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x: [B, C_in, T, H, W] -> [B, C_out, T', H', W'] (T' = T for stride 1)."""
        n_hist = self.history_frames
        missing = n_hist
        if cache is not None and n_hist > 0:
            past = cache.get(self)
            if past is not None:
                x = torch.cat([past, x], dim=2)
                missing = n_hist - past.shape[2]
            # clone: a view would keep the whole chunk alive until the next call
            cache.put(self, x[:, :, -n_hist:].clone())
        return super().forward(F.pad(x, (*self._spatial_pad, max(missing, 0), 0)))


class RMSNorm(nn.Module):
    """Official RMS_norm: F.normalize over channels (dim 1, 1e-12 norm floor) * sqrt(C) * gamma; no bias.

    `images=True` gives gamma the shape [C,1,1] for [N,C,H,W] input, else [C,1,1,1] for 5-D input
    (the shapes stored in the checkpoint).
    """

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def apply_layers(layers: nn.Sequential, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    """Run `layers` in order, handing the cache to the layers that look across frames (those whose
    class sets `streaming`)."""
    for layer in layers:
        x = layer(x, cache) if getattr(layer, "streaming", False) else layer(x)
    return x


class ResidualBlock(nn.Module):
    """norm-SiLU-conv3 twice plus a (1x1x1 conv) shortcut. x: [B, in_dim, T, H, W] -> [B, out_dim, T, H, W]."""

    streaming = True

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Identity at index 5 stands where the official nn.Dropout sits, keeping `residual.6`.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return apply_layers(self.residual, x, cache) + self.shortcut(x)


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W], the layout of the per-frame 2-D ops."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention within each frame, residual. x: [B, C, T, H, W]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.to_qkv(self.norm(frames_to_batch(x)))  # [B*T, 3C, H, W]: q, k, v channel blocks
        q, k, v = y.flatten(2).transpose(1, 2)[:, None].chunk(3, dim=-1)  # each [B*T, 1, H*W, C]
        # One head of width C, scale 1/sqrt(C); 4-D (a head axis of 1), as ONNX's attention takes it.
        y = F.scaled_dot_product_attention(q, k, v)[:, 0]
        y = self.proj(y.transpose(1, 2).reshape(b * t, c, h, w))
        return x + batch_to_frames(y, b)


class NearestUpsample2x(nn.Module):
    """2x nearest-exact upsampling of [N, C, H, W], computed in fp32 as the official code does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """Spatial (2x) and optionally temporal (2x) resampling between VAE stages.

    - downsample2d/3d: ZeroPad2d((0,1,0,1)) then Conv2d(dim, dim, 3, stride 2) per frame; 3d then
      applies `time_conv` (kernel 3, stride 2, no padding) to frames (x0,x1,x2), (x2,x3,x4), ...
      and keeps frame 0 as is: T = 2n+1 frames -> n+1.
    - upsample2d/3d: per frame nearest-exact 2x upsampling then Conv2d(dim, out_dim, 3) (Wan2.1:
      out_dim = dim//2, the default; Wan2.2 keeps dim); 3d first
      doubles the frames: frame 0 is kept, frames 1.. pass a causal `time_conv` (dim -> 2*dim,
      kernel 3) whose two channel halves become two consecutive frames: T -> 2T-1.

    Why frame 0 is special: the official chunked path (encode frame 0 alone, then 4 frames; decode
    one latent frame at a time) skips `time_conv` on the first chunk and, for upsampling, starts the
    time_conv's history with zeros at the second chunk. The whole-clip mode above is exactly that
    function written for all frames at once; the streaming mode keeps the official rules and equals
    it when the first chunk is one frame, as both official schedules make it.
    """

    streaming = True

    def __init__(self, dim: int, mode: str, out_dim: int | None = None) -> None:
        super().__init__()
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"mode must be one of {RESAMPLE_MODES}; got {mode!r}")
        self.dim = dim
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(
                NearestUpsample2x(),
                nn.Conv2d(dim, dim // 2 if out_dim is None else out_dim, 3, padding=1),
            )
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        else:
            self.resample = nn.Identity()
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x: [B, dim, T, H, W] -> [B, dim or out_dim, T', H*s, W*s] (s = 2 or 1/2)."""
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        x = batch_to_frames(self.resample(frames_to_batch(x)), x.shape[0])
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        if cache is None:
            if x.shape[2] == 1:
                return x
            return torch.cat([x[:, :, :1], self._interleave(self.time_conv(x[:, :, 1:]))], dim=2)
        if self not in cache:  # first chunk: passes unchanged (the official 'Rep' marker)
            cache.put(self, True)
            return x
        # Later chunks: a streaming causal conv whose history starts empty (zeros), as official.
        return self._interleave(self.time_conv(x, cache))

    @staticmethod
    def _interleave(y: torch.Tensor) -> torch.Tensor:
        """[B, 2C, T, H, W] -> [B, C, 2T, H, W]: channel half 0 gives even frames, half 1 odd."""
        b, c2, t, h, w = y.shape
        return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        if cache is None:
            t = x.shape[2]
            if t % 2 == 0:
                raise ValueError(f"temporal downsampling needs an odd frame count (2n+1); got {t}")
            if t == 1:
                return x
            return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        last = cache.get(self)
        cache.put(self, x[:, :, -1:].clone())
        if last is None:  # first chunk passes unchanged
            return x
        return self.time_conv(torch.cat([last, x], dim=2))

