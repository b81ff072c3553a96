"""Speed levers of the VAE decode, each one switch of `VAEDecodeOptions` (all off by default).

- `fused_norm_silu`: every RMS_norm that a SiLU follows (twice per residual block, and the head)
  runs as one pass (`wan_engine.kernels.channel_rms_norm_silu`) on CUDA. The reference reads and
  writes those activations twice, and in the upsampling tail they are the largest tensors of the
  whole run. Elsewhere the same two ops run unfused, so on the CPU the decode is the reference.
  fp32 compute with one rounding: in fp32 it differs from the reference by rounding only.
- `channels_last`: the decoder's 3D convolution weights in channels-last-3d layout, and the
  activations follow (cuDNN picks NDHWC kernels). Same math, another memory layout.
- `cudnn_benchmark`: cuDNN times its convolution algorithms for each new shape and keeps the
  fastest, while the decode runs (the process-wide flag, restored after).

Whether each pays is measured by the GPU check (bench/suites/vae.py), not assumed; a published
measurement calls the Wan VAE decode compute-bound, where layout and algorithm choice matter more
than fusing a memory-bound pair.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from ..reference.vae import WanVAE
from ..reference.vae_blocks import RMSNorm


class FusedRMSNormSiLU(nn.Module):
    """`SiLU(RMSNorm(x))` over channels as one op on CUDA (the two reference ops elsewhere)."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.gamma = norm.gamma  # the same parameter: [C, 1, 1, 1] as in the checkpoint
        self.scale = norm.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from ..kernels import channel_rms_norm_silu

            return channel_rms_norm_silu(x, self.gamma.view(-1))
        return nn.functional.silu(nn.functional.normalize(x, dim=1) * self.scale * self.gamma)


def fuse_norm_silu(decoder: nn.Module) -> int:
    """Replace, in every Sequential of `decoder`, each (RMSNorm, SiLU) pair by (FusedRMSNormSiLU,
    Identity): positions are kept, so the cached convolutions after them keep their slots.
    Returns how many pairs were fused."""
    fused = 0
    for module in decoder.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], RMSNorm) and isinstance(module[i + 1], nn.SiLU):
                module[i], module[i + 1] = FusedRMSNormSiLU(module[i]), nn.Identity()
                fused += 1
    return fused


def decode_copy(vae: WanVAE, dtype: torch.dtype, fused_norm_silu: bool, channels_last: bool) -> WanVAE:
    """The VAE the decoder runs: `vae` itself when nothing changes it, else a copy in `dtype` with
    the fused pairs and/or channels-last convolution weights."""
    if dtype == next(vae.parameters()).dtype and not (fused_norm_silu or channels_last):
        return vae
    fast = copy.deepcopy(vae).to(dtype)
    if fused_norm_silu:
        fuse_norm_silu(fast.decoder)
    if channels_last:
        for module in fast.decoder.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return fast


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """cuDNN benchmarks its algorithms inside (torch's process-wide flag, restored on the way out;
    nothing else of cuDNN's settings is touched). A no-op when not asked."""
    if not on:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
