"""Where the text encoder and the DiT live during each stage of a request (the memory options).

`t5_cpu` keeps the text encoder on the CPU for good. `offload` keeps every large component off
the GPU except while its own stage runs: the text encoder only for text encoding, the image
encoder (i2v/flf2v) only for image encoding, the DiT only for denoising (the VAE stays, it is
small and encodes the conditioning frames and decodes last). The peak GPU memory is then the
largest single stage, not the sum of all weights. A two-expert model (Wan2.2 A14B) denoises in two
stages, and with `offload` each expert is on the GPU only for its own (as the official
`offload_model`): "denoising" runs the high-noise expert, "denoising_low_noise" the low-noise one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

STAGES = ("load", "text_encoding", "image_encoding", "denoising", "denoising_low_noise", "vae_decode")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    text_encoder: torch.device
    dit: torch.device  # the DiT, or a two-expert model's high-noise one
    image_encoder: torch.device
    low_noise_dit: torch.device  # a two-expert model's low-noise DiT


def stage_placement(stage: str, *, device: torch.device, text_device: torch.device, offload: bool) -> Placement:
    """The devices of the text encoder and the DiT during `stage` (one of STAGES; "load" is where
    they are put when the pipeline is built). `device` is the pipeline's, `text_device` the text
    encoder's compute device (the CPU with t5_cpu)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    if not offload:
        return Placement(text_encoder=text_device, dit=device, image_encoder=device, low_noise_dit=device)
    return Placement(text_encoder=text_device if stage == "text_encoding" else CPU,
                     dit=device if stage == "denoising" else CPU,
                     image_encoder=device if stage == "image_encoding" else CPU,
                     low_noise_dit=device if stage == "denoising_low_noise" else CPU)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the executor keeps its weights in buffers)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    raise ValueError(f"{type(module).__name__} has no parameters or buffers to place")


def place(module: torch.nn.Module, device: torch.device) -> bool:
    """Move `module` to `device` if it is elsewhere; True when something moved. The new tensors are
    normal ones even when a request moves them inside inference mode, so that a later in-place
    update outside it (a LoRA merge) is allowed."""
    if module_device(module) == torch.device(device):
        return False
    with torch.inference_mode(False):
        module.to(device)
    return True
