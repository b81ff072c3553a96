"""A peak-memory model of the (tiled) VAE decode, from one small measured probe.

The decode's working memory has three parts:
- the output video (fp32, [B, 3, F, H, W]) and, when tiled, its blend weights and the trunk's
  features for every latent frame, which stay whole;
- each tile's feature cache: fixed slots whose sizes follow from the architecture (exact);
- one steady chunk's transient activations in the upsampling tail, proportional to the tile's
  pixels.
`DecodeMemoryModel.probe(vae)` measures the last part per latent pixel once (`LiveBytes`, exact
tensor bytes, on a small tile on the CPU) and computes the rest; `peak_bytes(...)` then predicts
any size. `tests/test_vae_static.py` checks it against a direct measurement at another size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from wan_engine.reference.vae import WanVAE
from wan_engine.vae.static import decoder_parts
from wan_engine.vae.tiling import TilePlan

from .live_memory import LiveBytes

PROBE = 6  # latent rows/cols of the probe tile


@dataclass(frozen=True)
class DecodeMemoryModel:
    cfg: object
    transient_per_pixel: float  # bytes per latent pixel of one steady chunk through the tail
    tail_slots_per_pixel: float  # bytes per latent pixel of the tail's feature cache
    trunk_slots_per_pixel: float
    trunk_channels: int
    dtype_bytes: int

    @classmethod
    @torch.no_grad()
    def probe(cls, vae: WanVAE) -> "DecodeMemoryModel":
        trunk, tail = decoder_parts(vae)
        param = next(vae.parameters())
        channels = vae.config.decoder_dim * vae.config.dim_mult[-1]
        x = torch.zeros(1, channels, 1, PROBE, PROBE, dtype=param.dtype, device=param.device)
        slots = tail.slots(1, PROBE, PROBE, param.dtype, param.device)
        _, slots = tail.run(x, slots, first=True)
        with LiveBytes() as live:
            out, _ = tail.run(x, slots, first=False)
            del out
        pixels = PROBE * PROBE
        tail_slots = sum(t.numel() * t.element_size() for t in slots)
        trunk_slots = sum(t.numel() * t.element_size() for t in trunk.slots(1, PROBE, PROBE, param.dtype, "cpu"))
        return cls(vae.config, live.peak / pixels, tail_slots / pixels, trunk_slots / pixels, channels,
                   param.element_size())

    def peak_bytes(self, batch: int, latent_frames: int, h: int, w: int, plan: TilePlan | None = None) -> float:
        """Predicted peak working bytes of decoding [batch, z, latent_frames, h, w] latents."""
        s, ts = self.cfg.spatial_stride, self.cfg.temporal_stride
        frames = ts * (latent_frames - 1) + 1
        video = 4 * batch * 3 * frames * h * w * s * s
        plan = TilePlan() if plan is None else plan
        if plan.tile is None:
            return video + batch * h * w * (self.transient_per_pixel + self.tail_slots_per_pixel
                                             + self.trunk_slots_per_pixel)
        tile = max((r1 - r0) * (c1 - c0) for r0, r1 in plan.spans(h, 0) for c0, c1 in plan.spans(w, 1))
        features = self.dtype_bytes * batch * self.trunk_channels * latent_frames * h * w
        weights = 4 * h * w * s * s
        return video + weights + features + batch * tile * (self.transient_per_pixel + self.tail_slots_per_pixel)
