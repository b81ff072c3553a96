"""The Wan VAE's layers on a horizontal slab of rows: the walk the row-parallel decode and encode share.

Every rank of a group holds a contiguous slab of rows at each resolution (split at latent-row
granularity, so every stage's slab is a whole number of rows). Why a slab's output equals those
rows of the single-process output:

- per-pixel ops (RMS norm over channels, SiLU, 1x1x1 convs, the temporal convs of kernel (k,1,1),
  nearest 2x upsampling) need nothing from other rows;
- every 3x3(x3) convolution needs one row above and below at its own resolution: those come
  from the neighbouring ranks (`exchange_halo`), zeros at the image border, exactly the zero
  padding the full convolution applies; the causal cache stores the halo-extended frames, so
  the temporal history carries the same halo rows;
- a 2x upsample doubles each slab's rows, so slabs stay aligned; the 3x3 conv after it takes a
  one-row halo exchanged before upsampling (a low-res row becomes two high-res rows);
- a 2x downsample (bottom/right zero pad, 3x3 stride-2 conv) halves an even slab; its last output
  row reads the first row of the rank below;
- the spatial attention blocks see the whole frame: each rank gathers the block's input rows,
  computes q/k/v for the frame and attends with its own query rows only;
- the Wan2.2 VAE's stage shortcuts and its 2x2 pixel patch act on 2x2 pixel blocks (average down,
  duplicate up): a slab at latent-row granularity has an even height at every resolution where
  they act, so they need no halo; their first-chunk marker lives in the same cache.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from wan_engine.reference.vae_blocks import (
    AttentionBlock,
    CausalConv3d,
    FeatureCache,
    NearestUpsample2x,
    Resample,
    ResidualBlock,
    RMSNorm,
    batch_to_frames,
    frames_to_batch,
)
from wan_engine.reference.vae_stages import DownStage, UpStage
from wan_engine.vae.fast import FusedRMSNormSiLU

from .comm import group_rank
from .halo import exchange_halo, gather_rows


class RowSplit:
    """Which rows of the current resolution each rank of `group` holds."""

    def __init__(self, group: dist.ProcessGroup | None, latent_ranges: list[tuple[int, int]]):
        self.group = group
        self.rank = group_rank(group)
        self.latent_heights = [stop - start for start, stop in latent_ranges]

    def heights_like(self, x: torch.Tensor) -> list[int]:
        """Every rank's slab height at the resolution of this rank's slab `x [..., h, W]`."""
        scale = x.shape[-2] // self.latent_heights[self.rank]
        return [h * scale for h in self.latent_heights]


def _same_padding(conv: nn.Module) -> tuple[int, int]:
    """(rows, cols) of zero padding of a stride-1 'same' conv with an odd spatial kernel."""
    k_h, k_w = conv.kernel_size[-2:]
    stride = conv.stride if isinstance(conv.stride, tuple) else (conv.stride,)
    if any(s != 1 for s in stride) or k_h % 2 == 0 or k_w % 2 == 0:
        raise ValueError(f"parallel VAE decode supports stride-1 convs with odd kernels, got {conv}")
    return k_h // 2, k_w // 2


def _causal_conv(conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    """`CausalConv3d.forward(x, cache)` on a slab: rows from the halo, columns and time padded here."""
    pad_h, pad_w = _same_padding(conv)
    x = exchange_halo(x, split.group, pad_h)
    missing = conv.history_frames
    if conv.history_frames > 0:
        past = cache.get(conv)
        if past is not None:
            x = torch.cat([past, x], dim=2)
            missing = conv.history_frames - past.shape[2]
        cache.put(conv, x[:, :, -conv.history_frames:].clone())
    x = F.pad(x, (pad_w, pad_w, 0, 0, max(missing, 0), 0))
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _residual(block: ResidualBlock, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    h = x
    for layer in block.residual:
        h = apply_rows(layer, h, cache, split)
    if isinstance(block.shortcut, CausalConv3d) and _same_padding(block.shortcut) != (0, 0):
        raise ValueError(f"parallel VAE decode expects a 1x1x1 shortcut conv, got {block.shortcut}")
    return h + block.shortcut(x)  # per-pixel: needs no halo and no cache (as the reference)


def _attention(block: AttentionBlock, x: torch.Tensor, split: RowSplit) -> torch.Tensor:
    """Whole-frame single-head attention for this slab's query rows."""
    b, c, t, rows, w = x.shape
    heights = split.heights_like(x)
    first_row = sum(heights[: split.rank])
    full = gather_rows(x, split.group, heights)  # [B, C, T, H, W]
    qkv = block.to_qkv(block.norm(frames_to_batch(full)))  # the reference's call, whole frame
    q, k, v = qkv.flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each [B*T, H*W, C]
    q = q[:, first_row * w:(first_row + rows) * w]  # tokens are row-major: a slab is a token range
    y = F.scaled_dot_product_attention(q, k, v)
    y = block.proj(y.transpose(1, 2).reshape(b * t, c, rows, w))
    return x + batch_to_frames(y, b)


def _double_frames(block: Resample, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    """The temporal half of an upsample3d (per pixel): the reference's streaming rules."""
    if block not in cache:  # first chunk passes unchanged
        cache.put(block, True)
        return x
    y = block.time_conv(x, cache)  # kernel (3,1,1): no spatial padding, so the slab suffices
    b, c2, t, h, w = y.shape
    # channel half 0 gives the even frames, half 1 the odd ones
    return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)


def _upsample(block: Resample, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    if block.mode == "upsample3d":
        x = _double_frames(block, x, cache)
    elif block.mode != "upsample2d":
        raise ValueError(f"a VAE decoder only upsamples; got a Resample in mode {block.mode!r}")
    upsample, conv = block.resample
    if not isinstance(upsample, NearestUpsample2x) or _same_padding(conv) != (1, 1):
        raise ValueError(f"expected nearest 2x upsampling then a 3x3 conv, got {block.resample}")
    frames = exchange_halo(frames_to_batch(x), split.group, 1)  # one low-res row each side
    frames = upsample(frames)[..., 1:-1, :]  # = one high-res halo row each side (zeros at borders)
    y = F.conv2d(F.pad(frames, (1, 1, 0, 0)), conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)
    return batch_to_frames(y, x.shape[0])


def _downsample(block: Resample, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    """A downsample2d/3d on a slab of even height: the reference pads one zero row below and one
    zero column right, then a 3x3 stride-2 conv, so output row i reads input rows 2i..2i+2. The slab's
    last output row needs the first row of the rank below (zeros below the last rank: that padding)."""
    pad, conv = block.resample
    if not isinstance(pad, nn.ZeroPad2d) or tuple(pad.padding) != (0, 1, 0, 1) or conv.stride != (2, 2) \
            or conv.kernel_size != (3, 3) or conv.padding != (0, 0):
        raise ValueError(f"expected ZeroPad2d((0, 1, 0, 1)) then a 3x3 stride-2 conv, got {block.resample}")
    if x.shape[-2] % 2:
        raise ValueError(f"a slab entering a 2x downsample needs an even height; got {x.shape[-2]} rows")
    frames = exchange_halo(frames_to_batch(x), split.group, 1)[..., 1:, :]  # own rows + one below
    y = F.conv2d(F.pad(frames, (0, 1, 0, 0)), conv.weight, conv.bias, 2, 0, conv.dilation, conv.groups)
    y = batch_to_frames(y, x.shape[0])
    return block._halve_frames(y, cache) if block.mode == "downsample3d" else y  # per pixel in time


def _down_stage(stage: DownStage, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    return run_rows(stage.downsamples, x, cache, split) + stage.avg_shortcut(x)  # shortcut: 2x2 blocks


def _up_stage(stage: UpStage, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    y = run_rows(stage.upsamples, x, cache, split)
    return y if stage.avg_shortcut is None else y + stage.avg_shortcut(x, cache)  # per pixel, then 2x2


def apply_rows(layer: nn.Module, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    if isinstance(layer, CausalConv3d):
        return _causal_conv(layer, x, cache, split)
    if isinstance(layer, ResidualBlock):
        return _residual(layer, x, cache, split)
    if isinstance(layer, AttentionBlock):
        return _attention(layer, x, split)
    if isinstance(layer, DownStage):
        return _down_stage(layer, x, cache, split)
    if isinstance(layer, UpStage):
        return _up_stage(layer, x, cache, split)
    if isinstance(layer, Resample):
        return (_downsample if layer.mode.startswith("downsample") else _upsample)(layer, x, cache, split)
    if isinstance(layer, (RMSNorm, nn.SiLU, nn.Identity, FusedRMSNormSiLU)):  # per pixel
        return layer(x)
    raise TypeError(f"the row-parallel VAE does not know how to split {type(layer).__name__} over rows")


def run_rows(layers, x: torch.Tensor, cache: FeatureCache, split: RowSplit) -> torch.Tensor:
    """`layers` in order on this rank's slab (an encoder's or decoder's forward for one chunk)."""
    for layer in layers:
        x = apply_rows(layer, x, cache, split)
    return x
