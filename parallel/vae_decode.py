"""Parallel Wan VAE decode: every rank decodes a horizontal slab of the video.

The official code decodes on rank 0 alone, and at 720p that decode is the peak-memory point of a
whole run. Here the latent rows are split over the ranks of a group and each rank runs the
official chunked decode (one latent frame at a time, the causal `FeatureCache` carried between
chunks) on its slab, with the reference decoder's own modules and parameters. Why the result is
the single-process decode, row for row:

- per-pixel ops (RMS norm over channels, SiLU, 1x1x1 convs, the temporal `time_conv` of kernel
  (3,1,1), nearest 2x upsampling) need nothing from other rows;
- every 3x3(x3) convolution needs one row above and below at its own resolution: those come
  from the neighbouring ranks (`exchange_halo`), zeros at the image border, exactly the zero
  padding the full convolution applies; the causal cache stores the halo-extended frames, so
  the temporal history carries the same halo rows;
- a 2x upsample doubles each slab's rows, so slabs stay aligned; the 3x3 conv after it takes a
  one-row halo exchanged before upsampling (a low-res row becomes two high-res rows);
- the spatial attention blocks see the whole frame: each rank gathers the block's input rows,
  computes q/k/v for the frame and attends with its own query rows only.

Peak activation memory per rank is about (own rows + 2 halo rows) / rows of the single-process
decode; the gathered output video is the only full-size tensor (see `output`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from wan_engine.reference.vae import WanVAE
from wan_engine.vae.fast import FusedRMSNormSiLU
from wan_engine.reference.vae_blocks import (
    AttentionBlock,
    CausalConv3d,
    FeatureCache,
    NearestUpsample2x,
    Resample,
    ResidualBlock,
    RMSNorm,
)

from .comm import group_rank, group_size
from .halo import exchange_halo, gather_rows, row_ranges

OUTPUTS = ("all", "rank0")


class _RowSplit:
    """Which rows of the current resolution each rank of `group` holds."""

    def __init__(self, group: dist.ProcessGroup | None, latent_ranges: list[tuple[int, int]]):
        self.group = group
        self.rank = group_rank(group)
        self.latent_heights = [stop - start for start, stop in latent_ranges]

    def heights_like(self, x: torch.Tensor) -> list[int]:
        """Every rank's slab height at the resolution of this rank's slab `x [..., h, W]`."""
        scale = x.shape[-2] // self.latent_heights[self.rank]
        return [h * scale for h in self.latent_heights]


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W], the reference's layout for per-frame 2-D ops."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).transpose(1, 2)


def _same_padding(conv: nn.Module) -> tuple[int, int]:
    """(rows, cols) of zero padding of a stride-1 'same' conv with an odd spatial kernel."""
    k_h, k_w = conv.kernel_size[-2:]
    stride = conv.stride if isinstance(conv.stride, tuple) else (conv.stride,)
    if any(s != 1 for s in stride) or k_h % 2 == 0 or k_w % 2 == 0:
        raise ValueError(f"parallel VAE decode supports stride-1 convs with odd kernels, got {conv}")
    return k_h // 2, k_w // 2


def _causal_conv(conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache, split: _RowSplit) -> torch.Tensor:
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


def _residual(block: ResidualBlock, x: torch.Tensor, cache: FeatureCache, split: _RowSplit) -> torch.Tensor:
    h = x
    for layer in block.residual:
        h = _apply(layer, h, cache, split)
    if isinstance(block.shortcut, CausalConv3d) and _same_padding(block.shortcut) != (0, 0):
        raise ValueError(f"parallel VAE decode expects a 1x1x1 shortcut conv, got {block.shortcut}")
    return h + block.shortcut(x)  # per-pixel: needs no halo and no cache (as the reference)


def _attention(block: AttentionBlock, x: torch.Tensor, split: _RowSplit) -> torch.Tensor:
    """Whole-frame single-head attention for this slab's query rows."""
    b, c, t, rows, w = x.shape
    heights = split.heights_like(x)
    first_row = sum(heights[: split.rank])
    full = gather_rows(x, split.group, heights)  # [B, C, T, H, W]
    qkv = block.to_qkv(block.norm(_frames_to_batch(full)))  # the reference's call, whole frame
    q, k, v = qkv.flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each [B*T, H*W, C]
    q = q[:, first_row * w:(first_row + rows) * w]  # tokens are row-major: a slab is a token range
    y = F.scaled_dot_product_attention(q, k, v)
    y = block.proj(y.transpose(1, 2).reshape(b * t, c, rows, w))
    return x + _batch_to_frames(y, b)


def _double_frames(block: Resample, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    """The temporal half of an upsample3d (per pixel): the reference's streaming rules."""
    if block not in cache:  # first chunk passes unchanged
        cache.put(block, True)
        return x
    y = block.time_conv(x, cache)  # kernel (3,1,1): no spatial padding, so the slab suffices
    b, c2, t, h, w = y.shape
    # channel half 0 gives the even frames, half 1 the odd ones
    return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)


def _upsample(block: Resample, x: torch.Tensor, cache: FeatureCache, split: _RowSplit) -> torch.Tensor:
    if block.mode == "upsample3d":
        x = _double_frames(block, x, cache)
    elif block.mode != "upsample2d":
        raise ValueError(f"a VAE decoder only upsamples; got a Resample in mode {block.mode!r}")
    upsample, conv = block.resample
    if not isinstance(upsample, NearestUpsample2x) or _same_padding(conv) != (1, 1):
        raise ValueError(f"expected nearest 2x upsampling then a 3x3 conv, got {block.resample}")
    frames = exchange_halo(_frames_to_batch(x), split.group, 1)  # one low-res row each side
    frames = upsample(frames)[..., 1:-1, :]  # = one high-res halo row each side (zeros at borders)
    y = F.conv2d(F.pad(frames, (1, 1, 0, 0)), conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)
    return _batch_to_frames(y, x.shape[0])


def _apply(layer: nn.Module, x: torch.Tensor, cache: FeatureCache, split: _RowSplit) -> torch.Tensor:
    if isinstance(layer, CausalConv3d):
        return _causal_conv(layer, x, cache, split)
    if isinstance(layer, ResidualBlock):
        return _residual(layer, x, cache, split)
    if isinstance(layer, AttentionBlock):
        return _attention(layer, x, split)
    if isinstance(layer, Resample):
        return _upsample(layer, x, cache, split)
    if isinstance(layer, (RMSNorm, nn.SiLU, nn.Identity, FusedRMSNormSiLU)):  # per pixel
        return layer(x)
    raise TypeError(f"parallel VAE decode does not know how to split {type(layer).__name__} over rows")


def _decode_chunk(vae: WanVAE, x: torch.Tensor, cache: FeatureCache, split: _RowSplit) -> torch.Tensor:
    """`Decoder3d.forward(x, cache)` for one latent frame of this rank's slab."""
    decoder = vae.decoder
    x = _apply(decoder.conv1, x, cache, split)
    for stage in (decoder.middle, decoder.upsamples, decoder.head):
        for layer in stage:
            x = _apply(layer, x, cache, split)
    return x


@torch.no_grad()
def parallel_vae_decode(
    vae: WanVAE,
    latents: torch.Tensor,
    group: dist.ProcessGroup | None,
    *,
    output: str = "all",
) -> torch.Tensor | None:
    """`vae.decode(latents)` (chunked) with the rows split over the ranks of `group`.

    latents: normalized `[B, z_dim, f, h, w]`, the same tensor on every rank of `group` (the
    world group when every rank holds the final latents, or one CFG branch's `mesh.sp_group`).
    Needs h >= the group size (each rank takes >= 1 latent row; h need not be divisible).
    Returns the video `[B, 3, 1 + (f-1)*ts, h*ss, w*ss]` in [-1, 1] (ts, ss: the VAE's temporal and
    spatial strides) on every rank with output="all", or on group rank 0 only (None elsewhere)
    with output="rank0". group=None decodes on this process alone.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    z_dim = vae.config.z_dim
    if latents.ndim != 5 or latents.shape[1] != z_dim or min(latents.shape[2:]) < 1:
        raise ValueError(f"latents must have shape [B, {z_dim}, f, h, w] with f, h, w >= 1, "
                         f"got {tuple(latents.shape)}")
    world = group_size(group)
    if latents.shape[3] < world:
        raise ValueError(f"latents height h={latents.shape[3]} is smaller than the {world} ranks of the "
                         f"decode group; every rank needs at least one latent row")
    ranges = row_ranges(latents.shape[3], world)
    split = _RowSplit(group, ranges)
    start, stop = ranges[split.rank]
    x = vae.conv2(vae.denormalize_latents(latents[..., start:stop, :]))  # per pixel: no halo

    frames = 1 + (x.shape[2] - 1) * vae.config.temporal_stride
    stride = vae.config.spatial_stride
    video = x.new_empty(x.shape[0], 3, frames, (stop - start) * stride, x.shape[4] * stride)
    cache, filled = FeatureCache(), 0
    for i in range(x.shape[2]):
        chunk = _decode_chunk(vae, x[:, :, i:i + 1], cache, split)
        video[:, :, filled:filled + chunk.shape[2]] = chunk.clamp_(-1.0, 1.0)
        filled += chunk.shape[2]
    if filled != frames:
        raise RuntimeError(f"decoded {filled} frames, expected {frames}")  # reference changed shape
    heights = [(b - a) * stride for a, b in ranges]
    return gather_rows(video, group, heights, to_rank0_only=output == "rank0")
