"""Spatially tiled VAE decode: bounded memory at any resolution.

The latent plane is cut into overlapping tiles; each tile is decoded on its own (the static chunk
loop, with its own feature cache) and the decoded tiles are blended with linear ramps across
each overlap. Peak activation memory is one tile's instead of the whole frame's; the price is a
seam error where a tile's border convolutions see zeros instead of their neighbours, which the
overlap absorbs (`tests/test_vae_static.py` measures it).

`TilePlan` is the choice: `off`, a tile size `HxW` (latent rows x cols), or `auto` (from the free
GPU memory and the roofline's activation model; the CPU has no such bound, so `auto` is off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..reference.vae import WanVAE
from .static import StaticChunks, decoder_parts

DEFAULT_OVERLAP = 4  # latent rows/cols shared by neighbouring tiles (32 pixels)


@dataclass(frozen=True)
class TilePlan:
    """Tiles of `tile` (latent rows, cols) overlapping by `overlap` latent rows/cols; None: no tiling."""

    tile: tuple[int, int] | None = None
    overlap: int = DEFAULT_OVERLAP
    # The tile in pixels when parsed from `HxW` (then `tile` is for a stride of 8, every Wan2.1
    # VAE's): `for_stride` re-derives it for the VAE that decodes.
    pixels: tuple[int, int] | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.tile is not None:
            th, tw = self.tile
            for name, v in (("tile height", th), ("tile width", tw)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"vae tiling: {name} must be an int >= 1 latent rows/cols; got {v!r}")
            if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not (
                    0 <= self.overlap < min(th, tw)):
                raise ValueError(f"vae tiling: overlap must be an int in [0, {min(th, tw) - 1}] (below the tile "
                                 f"size); got {self.overlap!r}")

    @classmethod
    def parse(cls, text: str, spatial_stride: int = 8) -> "TilePlan | str":
        """`off`, `auto` (returned as the string, resolved per request) or `HxW` in pixels, a
        multiple of the VAE's spatial stride."""
        if text in ("off", "auto"):
            return cls() if text == "off" else "auto"
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"--vae-tiling must be off, auto or HxW in pixels (e.g. 256x256); got {text!r}") from None
        if h <= 0 or w <= 0 or h % spatial_stride or w % spatial_stride:
            raise ValueError(f"--vae-tiling HxW must be positive multiples of {spatial_stride} pixels; got {text!r}")
        tile = (h // spatial_stride, w // spatial_stride)
        return cls(tile, overlap=min(DEFAULT_OVERLAP, min(tile) - 1), pixels=(h, w))

    def for_stride(self, spatial_stride: int) -> "TilePlan":
        """This plan for a VAE of `spatial_stride` pixels per latent cell (Wan2.2's: 16)."""
        if self.pixels is None:
            return self
        return TilePlan.parse(f"{self.pixels[0]}x{self.pixels[1]}", spatial_stride)

    def spans(self, length: int, axis: int) -> list[tuple[int, int]]:
        """[start, stop) latent ranges covering `length` along `axis` (0 rows, 1 cols)."""
        if self.tile is None or self.tile[axis] >= length:
            return [(0, length)]
        size, step = self.tile[axis], self.tile[axis] - self.overlap
        count = math.ceil((length - size) / step) + 1
        starts = [min(i * step, length - size) for i in range(count)]
        return [(s, s + size) for s in starts]

    def tiles(self, h: int, w: int) -> int:
        return len(self.spans(h, 0)) * len(self.spans(w, 1))


@torch.no_grad()
def tiled_decode(vae: WanVAE, latents: torch.Tensor, plan: TilePlan,
                 parts: tuple[StaticChunks, StaticChunks] | None = None) -> torch.Tensor:
    """Normalized latents [B, z_dim, f, h, w] -> video [B, 3, F, 8h, 8w] in [-1, 1].

    The decoder's trunk (conv1 and the middle block, whose attention spans the whole frame) runs
    on whole latent frames, chunk by chunk, and its features are kept (latent resolution: small).
    Then each tile runs the upsampling tail over every chunk with its own feature cache, which is
    dropped before the next tile, and is blended into the video where tiles overlap. Peak memory:
    the trunk features, the video, and one tile's cache and activations.
    """
    trunk, tail = decoder_parts(vae) if parts is None else parts
    features = trunk_features(vae, latents, trunk)
    canvas = TileCanvas(vae, features, plan)
    for index, tile in enumerate(canvas.tiles):
        canvas.add(index, decode_tile(tail, features, tile))
    return canvas.video()


@torch.no_grad()
def trunk_features(vae: WanVAE, latents: torch.Tensor, trunk: StaticChunks) -> torch.Tensor:
    """The trunk's features of every latent frame [B, C, f, h, w] (whole frames, chunk by chunk)."""
    vae._check_latents(latents)
    x = vae.conv2(vae.denormalize_latents(latents))
    b, _, f, h, w = x.shape
    slots = trunk.slots(b, h, w, x.dtype, x.device)
    features = []
    for t in range(f):
        feature, slots = trunk.run(x[:, :, t:t + 1], slots, first=t == 0)
        features.append(feature)
    return torch.cat(features, dim=2)


@torch.no_grad()
def decode_tile(tail: StaticChunks, features: torch.Tensor, tile: tuple[int, int, int, int]) -> torch.Tensor:
    """The tail over every chunk of one tile (r0, r1, c0, c1 in latent rows/cols), with the tile's
    own feature cache: the decoded tile [B, 3, F, (r1-r0)*s, (c1-c0)*s] in fp32, unclamped."""
    r0, r1, c0, c1 = tile
    b, _, f = features.shape[:3]
    slots = tail.slots(b, r1 - r0, c1 - c0, features.dtype, features.device)
    parts = []
    for t in range(f):
        video, slots = tail.run(features[:, :, t:t + 1, r0:r1, c0:c1], slots, first=t == 0)
        parts.append(video.float())
    return torch.cat(parts, dim=2)


class TileCanvas:
    """The video the decoded tiles of `plan` are blended into, in the order `add` is called (the
    same order gives the same sums, so a tile-parallel decode that adds them in index order
    reproduces the one-process decode exactly)."""

    def __init__(self, vae: WanVAE, features: torch.Tensor, plan: TilePlan):
        b, _, f, h, w = features.shape
        self.stride = s = vae.config.spatial_stride
        self.rows, self.cols = plan.spans(h, 0), plan.spans(w, 1)
        self.tiles = [(r0, r1, c0, c1) for r0, r1 in self.rows for c0, c1 in self.cols]
        self.shape = (b, 3, vae.config.temporal_stride * (f - 1) + 1, h * s, w * s)  # the video's
        self.device = features.device
        self.out = self.total = None  # allocated by the first `add` (a rank that only decodes never does)

    def tile_shape(self, index: int) -> tuple[int, ...]:
        r0, r1, c0, c1 = self.tiles[index]
        return (*self.shape[:3], (r1 - r0) * self.stride, (c1 - c0) * self.stride)

    def add(self, index: int, video: torch.Tensor) -> None:
        i, j = divmod(index, len(self.cols))
        r0, r1, c0, c1 = self.tiles[index]
        s = self.stride
        if self.out is None:
            self.out = torch.zeros(self.shape, device=self.device)
            self.total = torch.zeros(self.shape[3:], device=self.device)
        weight = _tile_weight(self.rows, self.cols, i, j, s, self.out.device)
        self.total[r0 * s:r1 * s, c0 * s:c1 * s] += weight
        self.out[:, :, :, r0 * s:r1 * s, c0 * s:c1 * s] += video * weight

    def video(self) -> torch.Tensor:
        """The blended video, in [-1, 1]. Normalized in place: a division and a clamp into new
        tensors would hold three videos at once (at 720p x 81 frames, 0.9 GB each). Call it once."""
        return self.out.div_(self.total).clamp_(-1.0, 1.0)


def _tile_weight(rows, cols, i: int, j: int, s: int, device) -> torch.Tensor:
    """The [tile H, tile W] blend weight of tile (i, j) in pixels, from the overlaps it actually
    shares with its neighbours (the last tile of a row or column may be shifted back)."""
    (r0, r1), (c0, c1) = rows[i], cols[j]
    up = (rows[i - 1][1] - r0) * s if i > 0 else 0
    down = (r1 - rows[i + 1][0]) * s if i + 1 < len(rows) else 0
    left = (cols[j - 1][1] - c0) * s if j > 0 else 0
    right = (c1 - cols[j + 1][0]) * s if j + 1 < len(cols) else 0
    return _ramp_sides((r1 - r0) * s, up, down, device)[:, None] * _ramp_sides((c1 - c0) * s, left, right, device)[None]


def _ramp_sides(length: int, before: int, after: int, device) -> torch.Tensor:
    """Blend weights along one axis of a decoded tile: linear ramps over the overlap shared with
    the neighbour before / after it, 1 elsewhere (never 0: a pixel covered once keeps weight 1)."""
    weight = torch.ones(length, device=device)
    if before > 0:
        weight[:before] = (torch.arange(before, device=device, dtype=torch.float32) + 0.5) / before
    if after > 0:
        weight[-after:] = ((torch.arange(after, device=device, dtype=torch.float32) + 0.5) / after).flip(0)
    return weight
