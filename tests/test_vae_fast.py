"""The VAE decode's speed levers (wan_engine/vae/fast.py): what each changes, on the CPU.

On the CPU the fused norm + SiLU runs the reference's two ops (the Triton kernel is CUDA-only and
tested against its oracle in tests/kernels/), so the decode must equal the reference bit for bit;
channels-last changes the convolutions' memory layout, so only their summation order (fp32
rounding: 1e-6 relative, measured ~1e-7). The GPU test bounds the fused kernel's decode by fp32
rounding too, against the unfused decode on the same GPU.
"""
from __future__ import annotations

import pytest
import torch

from wan_engine.configs import VAEConfig
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.vae import WanVAE
from wan_engine.vae.decode import VAEDecodeOptions, VAEDecoder
from wan_engine.vae.fast import FusedRMSNormSiLU, cudnn_benchmark, fuse_norm_silu


def rel_l2(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def vae():
    model = WanVAE(VAEConfig(base_dim=8)).eval().requires_grad_(False)
    model.load_state_dict(random_state_dict(model, seed=2))
    return model


@pytest.fixture(scope="module")
def latents():
    return torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0))


def test_every_norm_that_a_silu_follows_is_fused_in_place(vae):
    import copy

    decoder = copy.deepcopy(vae.decoder)
    blocks = sum(1 for m in decoder.modules() if type(m).__name__ == "ResidualBlock")
    assert fuse_norm_silu(decoder) == 2 * blocks + 1  # two per residual block, and the head
    assert sum(isinstance(m, FusedRMSNormSiLU) for m in decoder.modules()) == 2 * blocks + 1
    assert fuse_norm_silu(decoder) == 0  # nothing left to fuse
    # The attention block's norm has no SiLU after it and stays the reference's.
    assert any(type(m).__name__ == "RMSNorm" for m in decoder.modules())


def test_fused_decode_on_the_cpu_is_the_reference_decode(vae, latents):
    plain = VAEDecoder(vae)(latents)
    fused = VAEDecoder(vae, VAEDecodeOptions(fused_norm_silu=True))
    assert fused.vae is not vae  # a copy: the pipeline's own VAE (and its encode) is untouched
    assert torch.equal(fused(latents), plain)
    assert torch.equal(plain, vae.decode(latents))


def test_channels_last_changes_the_layout_only(vae, latents):
    decoder = VAEDecoder(vae, VAEDecodeOptions(channels_last=True))
    weights = [m.weight for m in decoder.vae.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights if w.shape[2:] != (1, 1, 1))
    err = rel_l2(decoder(latents), VAEDecoder(vae)(latents))
    print(f"channels-last decode: rel L2 {err:.1e}")
    assert err <= 1e-6


def test_cudnn_benchmark_is_set_inside_and_restored():
    before = torch.backends.cudnn.benchmark
    with cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before
    with cudnn_benchmark(False):
        assert torch.backends.cudnn.benchmark == before


def test_options_and_cli_levers_are_checked():
    from wan_engine.cli import main

    with pytest.raises(ValueError, match="vae fused_norm_silu must be True or False"):
        VAEDecodeOptions(fused_norm_silu="yes")
    assert main(["generate", "--prompt", "x", "--vae-speed", "fused-norm-silu,turbo"]) == 2


@pytest.mark.gpu
def test_the_fused_kernel_decode_is_the_unfused_decode_within_fp32_rounding(vae, latents):
    gpu = vae.to("cuda")
    x = latents.cuda()
    plain = VAEDecoder(gpu)(x)
    fast = VAEDecoder(gpu, VAEDecodeOptions(fused_norm_silu=True, channels_last=True, cudnn_benchmark=True))(x)
    assert rel_l2(fast, plain) <= 1e-5  # one fp32 rounding per fused pair, ~20 pairs deep
