"""The Wan VAE as fixed-shape chunk functions with explicit, preallocated feature caches.

The reference streams a clip through `FeatureCache`, a dict that fills as chunks arrive. Here the
same modules run on a `SlotCache` instead: one tensor slot per temporal module, allocated before the
first chunk (zeros), read and replaced by every chunk. A chunk function is then

    out, slots = chunk(x, slots)        # cache in -> cache out, every shape fixed

with two kinds: the first chunk (temporal resampling passes frame 0 through, as the official
schedule does) and the steady chunk. The loop over latent frames (decode) or 4-frame groups
(encode) replays the steady function; nothing grows, nothing branches on data and nothing is
read back to the host, so each function can be captured as a CUDA graph or exported to ONNX.

Why zero slots are the reference: a causal conv pads two zero frames in front of the first chunk
and keeps the last two frames of (history, chunk); starting from two zero frames and keeping the
last two gives the same frames. A temporal upsample's conv starts its history empty (zeros) at
the second chunk, as official; a temporal downsample only keeps its last input frame.

Slot shapes scale with the latent size; they are read off one probe chunk at the smallest size
(latent 1x1 for decode, 8x8 pixels for encode) and scaled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..reference.vae import ENCODE_CHUNK_FRAMES, WanVAE
from ..reference.vae_blocks import CausalConv3d, FeatureCache, Resample

FIRST, STEADY = "first", "steady"


@dataclass(frozen=True)
class SlotSpec:
    """One temporal module's slot: channels, frames and its spatial size per unit of the chunk's."""

    module: nn.Module
    channels: int
    frames: int
    scale_h: float
    scale_w: float


class _ProbeCache(FeatureCache):
    """The reference cache, recording which modules keep state and the shapes they keep."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, tuple[nn.Module, torch.Size]] = {}

    def put(self, module, value) -> None:
        super().put(module, value)
        if isinstance(value, torch.Tensor):
            self.seen.setdefault(id(module), (module, value.shape))


class SlotCache:
    """The `FeatureCache` interface over fixed slots, for one chunk of kind FIRST or STEADY.

    Causal convs always read their slot (zeros before the first chunk). A temporal downsample
    reads nothing on the first chunk; a temporal upsample counts as unseen on the first chunk
    (it passes frame 0 through) and as seen afterwards. `put` records the new value of a slot;
    `out` lists them in slot order, the chunk's cache out.
    """

    def __init__(self, index: dict[int, int], slots: tuple[torch.Tensor, ...], kind: str) -> None:
        self._index, self._slots, self._kind = index, slots, kind
        self._out: list[torch.Tensor | None] = list(slots)

    def get(self, module):
        i = self._index.get(id(module))
        if i is None:
            return None
        if isinstance(module, Resample) and self._kind == FIRST:
            return None
        return self._slots[i]

    def put(self, module, value) -> None:
        i = self._index.get(id(module))
        if i is not None:  # a temporal upsample's first-chunk marker has no slot
            self._out[i] = value

    def __contains__(self, module) -> bool:
        return self._kind == STEADY

    def out(self) -> tuple[torch.Tensor, ...]:
        return tuple(self._out)


class StaticChunks:
    """The chunk functions of one VAE half (`vae.decoder` after conv2, or `vae.encoder`).

    `slots(batch, h, w, dtype, device)` allocates the zero cache for chunks of spatial size h x w
    (latent rows/cols for decode, pixel rows/cols for encode); `first` and `steady` run a chunk.
    """

    def __init__(self, module: nn.Module, specs: list[SlotSpec]):
        self.module = module
        self.specs = specs
        self.index = {id(spec.module): i for i, spec in enumerate(specs)}

    def slots(self, batch: int, h: int, w: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
        out = []
        for spec in self.specs:
            sh, sw = spec.scale_h * h, spec.scale_w * w
            if sh != int(sh) or sw != int(sw):
                raise ValueError(f"a chunk of {h}x{w} does not divide into this VAE's strides")
            out.append(torch.zeros(batch, spec.channels, spec.frames, int(sh), int(sw), dtype=dtype, device=device))
        return tuple(out)

    def first(self, x: torch.Tensor, slots: tuple[torch.Tensor, ...]):
        return self._run(x, slots, FIRST)

    def steady(self, x: torch.Tensor, slots: tuple[torch.Tensor, ...]):
        return self._run(x, slots, STEADY)

    def run(self, x: torch.Tensor, slots: tuple[torch.Tensor, ...], first: bool):
        return self._run(x, slots, FIRST if first else STEADY)

    def _run(self, x, slots, kind):
        cache = SlotCache(self.index, slots, kind)
        return self.module(x, cache), cache.out()


class DecoderTrunk:
    """The decoder up to its middle block (conv1, residual, attention over the whole frame,
    residual): global, at latent resolution, so it is never tiled."""

    def __init__(self, decoder: nn.Module):
        self.decoder = decoder

    def __call__(self, x, cache):
        return self.decoder.trunk(x, cache)


class DecoderTail:
    """The decoder after its middle block (upsampling stages and head): local convolutions only,
    where the activations grow with the resolution; tiled decode cuts this part into tiles."""

    def __init__(self, decoder: nn.Module):
        self.decoder = decoder

    def __call__(self, x, cache):
        return self.decoder.tail(x, cache)


def _specs(module: nn.Module, probe: torch.Tensor, unit: tuple[int, int]) -> list[SlotSpec]:
    """Slots of every module that keeps state across chunks, from a first and a steady probe chunk
    (a temporal upsample's conv keeps state only from the second chunk on)."""
    cache = _ProbeCache()
    with torch.no_grad():
        module(probe[:, :, :1], cache)
        module(probe[:, :, 1:], cache)
    specs = []
    for mod, shape in cache.seen.values():
        frames = mod.history_frames if isinstance(mod, CausalConv3d) else 1
        specs.append(SlotSpec(mod, shape[1], frames, shape[3] / unit[0], shape[4] / unit[1]))
    return specs


def decoder_chunks(vae: WanVAE) -> StaticChunks:
    """Decode chunks: one latent frame [B, z_dim, 1, h, w] (after conv2) -> 1 frame (first) or
    `temporal_stride` frames (steady) of video."""
    param = next(vae.decoder.parameters())
    probe = torch.zeros(1, vae.config.z_dim, 2, 1, 1, dtype=param.dtype, device=param.device)
    return StaticChunks(vae.decoder, _specs(vae.decoder, probe, (1, 1)))


def encoder_chunks(vae: WanVAE) -> StaticChunks:
    """Encode chunks: frame 0 (first), then 4 frames (steady) [B, 3, f, H, W] -> one latent frame of
    the encoder's 2*z_dim features."""
    param = next(vae.encoder.parameters())
    s = vae.config.spatial_stride
    probe = torch.zeros(1, 3, 1 + ENCODE_CHUNK_FRAMES, s, s, dtype=param.dtype, device=param.device)
    return StaticChunks(vae.encoder, _specs(vae.encoder, probe, (s, s)))


def decoder_parts(vae: WanVAE) -> tuple[StaticChunks, StaticChunks]:
    """(trunk, tail) chunk functions: decode = tail(trunk(conv2(z))) per latent frame."""
    param = next(vae.decoder.parameters())
    trunk, tail = DecoderTrunk(vae.decoder), DecoderTail(vae.decoder)
    probe = torch.zeros(1, vae.config.z_dim, 2, 1, 1, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        features = trunk(probe, None)
    return (StaticChunks(trunk, _specs(trunk, probe, (1, 1))),
            StaticChunks(tail, _specs(tail, torch.zeros_like(features), (1, 1))))


def _eager(key, fn, *inputs):
    return fn(*inputs)


@torch.no_grad()
def static_decode(vae: WanVAE, latents: torch.Tensor, chunks: StaticChunks | None = None, call=None) -> torch.Tensor:
    """`vae.decode` through the static chunk functions: normalized latents [B, z_dim, f, h, w] ->
    video [B, 3, 4(f-1)+1, 8h, 8w] in [-1, 1]. `call(key, fn, *tensors)` runs each steady chunk
    (default eagerly; `GraphReplayer.call` replays it as a CUDA graph)."""
    vae._check_latents(latents)
    chunks = decoder_chunks(vae) if chunks is None else chunks
    call = _eager if call is None else call
    x = vae.conv2(vae.denormalize_latents(latents))
    b, _, f, h, w = x.shape
    slots = chunks.slots(b, h, w, x.dtype, x.device)
    out, slots = chunks.first(x[:, :, :1], slots)
    frames = [out]

    def steady(chunk, *state):
        return chunks.steady(chunk, state)

    for i in range(1, f):
        chunk = x[:, :, i:i + 1]
        out, slots = call(("vae-decode-steady", id(chunks), tuple(chunk.shape), chunk.dtype), steady, chunk, *slots)
        frames.append(out)
    return torch.cat(frames, dim=2).clamp(-1.0, 1.0)


@torch.no_grad()
def static_encode(vae: WanVAE, video: torch.Tensor, chunks: StaticChunks | None = None) -> torch.Tensor:
    """`vae.encode` through the static chunk functions: video [B, 3, 4n+1, H, W] in [-1, 1] ->
    normalized latents [B, z_dim, n+1, H/8, W/8]."""
    vae._check_video(video)
    chunks = encoder_chunks(vae) if chunks is None else chunks
    b, _, t, h, w = video.shape
    slots = chunks.slots(b, h, w, video.dtype, video.device)
    out, slots = chunks.first(video[:, :, :1], slots)
    features = [out]
    for start in range(1, t, ENCODE_CHUNK_FRAMES):
        out, slots = chunks.steady(video[:, :, start:start + ENCODE_CHUNK_FRAMES], slots)
        features.append(out)
    mu = vae.conv1(torch.cat(features, dim=2))[:, : vae.config.z_dim]
    return vae.normalize_latents(mu)
