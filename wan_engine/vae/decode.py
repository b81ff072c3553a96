"""How a pipeline decodes: the static chunk loop, optionally tiled, optionally in bf16.

`VAEDecodeOptions(tiling=..., dtype=...)`: `tiling` a `TilePlan` (off by default), or "auto" to
pick tiles per request from the free GPU memory; `dtype` fp32 (the official decode) or bf16
(lossy: about half the memory and time on a GPU; its quality is reported by the tests and bench).
Both are off by default. The speed levers `fused_norm_silu`, `channels_last` and
`cudnn_benchmark` (see `fast.py`) change no math beyond rounding; also off by default.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..reference.vae import WanVAE
from .fast import cudnn_benchmark, decode_copy
from .static import decoder_chunks, decoder_parts, static_decode
from .tiling import TilePlan, tiled_decode

VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
AUTO_MEMORY_FRACTION = 0.7  # of the free memory a tiled decode may plan to use
PROBE_TILE = 8  # latent rows/cols of the tile the auto plan measures


@dataclass(frozen=True)
class VAEDecodeOptions:
    tiling: TilePlan | str = TilePlan()
    dtype: str = "fp32"
    fused_norm_silu: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False

    def __post_init__(self):
        for name in ("fused_norm_silu", "channels_last", "cudnn_benchmark"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"vae {name} must be True or False; got {getattr(self, name)!r}")
        if not (isinstance(self.tiling, TilePlan) or self.tiling == "auto"):
            raise ValueError(f"vae tiling must be a TilePlan or 'auto'; got {self.tiling!r}")
        if self.dtype not in VAE_DTYPES:
            raise ValueError(f"vae dtype must be one of {', '.join(VAE_DTYPES)}; got {self.dtype!r}")

    @property
    def lossless(self) -> bool:
        return self.dtype == "fp32" and isinstance(self.tiling, TilePlan) and self.tiling.tile is None


class VAEDecoder:
    """Decodes normalized latents with `options` on `vae` (a bf16 copy is made once if asked)."""

    def __init__(self, vae: WanVAE, options: VAEDecodeOptions | None = None):
        options = VAEDecodeOptions() if options is None else options
        if isinstance(options.tiling, TilePlan):  # a tile given in pixels, for this VAE's stride
            options = dataclasses.replace(options, tiling=options.tiling.for_stride(vae.config.spatial_stride))
        self.options = o = options
        self.vae = decode_copy(vae, VAE_DTYPES[o.dtype], o.fused_norm_silu, o.channels_last)
        self._parts = None
        self._chunks = None
        self.last_plan: TilePlan | None = None

    def plan_for(self, latents: torch.Tensor) -> TilePlan:
        if self.options.tiling != "auto":
            return self.options.tiling
        return auto_tile_plan(self.vae, latents.shape, latents.device)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, graphs=None) -> torch.Tensor:
        """[B, z_dim, f, h, w] -> video [B, 3, F, 8h, 8w] fp32 in [-1, 1]. `graphs` (a
        GraphReplayer) replays the untiled decode's steady chunks as CUDA graphs."""
        with cudnn_benchmark(self.options.cudnn_benchmark):
            return self._decode(latents.to(next(self.vae.parameters()).dtype), graphs)

    def _decode(self, latents: torch.Tensor, graphs) -> torch.Tensor:
        plan = self.last_plan = self.plan_for(latents)
        if plan.tile is None:
            if self._chunks is None:
                self._chunks = decoder_chunks(self.vae)
            call = graphs.call if graphs is not None and graphs.active else None
            return static_decode(self.vae, latents, self._chunks, call).float()
        return tiled_decode(self.vae, latents, plan, self.parts())

    def describe(self) -> str:
        """How the last decode ran, for a run's summary: dtype, tiling and speed levers."""
        plan, o = self.last_plan, self.options
        tiles = "off" if plan is None or plan.tile is None else f"{plan.tile[0]}x{plan.tile[1]} latent tiles, overlap {plan.overlap}"
        levers = [name for name, on in (("fused-norm-silu", o.fused_norm_silu), ("channels-last", o.channels_last),
                                        ("cudnn-benchmark", o.cudnn_benchmark)) if on]
        return f"{o.dtype}, tiling {tiles}" + (f", {', '.join(levers)}" if levers else "")

    def parts(self):
        """The decoder's (trunk, tail) static chunks, built once."""
        if self._parts is None:
            self._parts = decoder_parts(self.vae)
        return self._parts


def auto_tile_plan(vae: WanVAE, latent_shape, device: torch.device) -> TilePlan:
    """Square tiles that fit `AUTO_MEMORY_FRACTION` of the free GPU memory, from one measured probe
    tile; no tiling when the whole frame fits, and on the CPU (no memory bound to plan against)."""
    device = torch.device(device)
    if device.type != "cuda":
        return TilePlan()
    b, _, f, h, w = latent_shape
    free, _ = torch.cuda.mem_get_info(device)
    per_pixel = _probe_bytes_per_latent_pixel(vae, b, device)
    s = vae.config.spatial_stride
    fixed = 4 * b * 3 * (vae.config.temporal_stride * (f - 1) + 1) * h * w * s * s  # the fp32 video
    budget = AUTO_MEMORY_FRACTION * free - fixed
    if budget <= 0:
        raise ValueError(f"the decoded video alone ({fixed / 2**30:.1f} GiB) does not fit the free GPU memory "
                         f"({free / 2**30:.1f} GiB): decode fewer frames or a smaller size")
    if per_pixel * h * w <= budget:
        return TilePlan()
    side = max(int(math.sqrt(budget / per_pixel)), 2 * 4 + 1)
    return TilePlan((min(side, h), min(side, w)), overlap=4)


def _probe_bytes_per_latent_pixel(vae: WanVAE, batch: int, device: torch.device) -> float:
    """The peak bytes per latent pixel of one steady chunk through the tail (measured on a
    PROBE_TILE x PROBE_TILE tile, after its first chunk so the caches are filled)."""
    trunk, tail = decoder_parts(vae)
    dtype = next(vae.parameters()).dtype
    channels = vae.config.decoder_dim * vae.config.dim_mult[-1]
    x = torch.zeros(batch, channels, 1, PROBE_TILE, PROBE_TILE, dtype=dtype, device=device)
    slots = tail.slots(batch, PROBE_TILE, PROBE_TILE, dtype, device)
    with torch.no_grad():
        _, slots = tail.run(x, slots, first=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        tail.run(x, slots, first=False)
        peak = torch.cuda.max_memory_allocated(device) - before
    slot_bytes = sum(t.numel() * t.element_size() for t in slots)
    return (peak + slot_bytes) / (PROBE_TILE * PROBE_TILE)
