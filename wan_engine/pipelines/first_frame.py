"""Wan2.2 TI2V-5B's image-to-video conditioning, as the official `textimage2video.py` (`i2v`)
builds it.

- The video size comes from the image's aspect ratio and the requested area (`best_output_size`,
  multiples of 32 pixels: the DiT's 2x2 patch of the VAE's 16-pixel latent cells).
- At encode time the image is scaled (Lanczos, PIL) to cover that size and centre-cropped to it,
  then mapped to [-1, 1]; its VAE latents [1, 48, 1, h, w] replace latent frame 0 of the noise and, after every
  solver step, of the latents; frame 0's tokens run at timestep 0 (`runner.FirstFrame`).

No CLIP features and no `y` channels: the DiT is the text-to-video one.
"""
from __future__ import annotations

import numpy as np
import torch

from .image_condition import ConditionImage, ImagePrompt, _to_unit_range, check_image_fits

FRAME_ALIGN = 32  # pixels per token side: patch 2 x 16 pixels per latent cell (the official dw, dh)


def best_output_size(width: int, height: int, align: int, area: int) -> tuple[int, int]:
    """(width, height), multiples of `align` with at most `area` pixels, whose aspect ratio is
    closest to the image's: the official rule, in its float order (round the width down first,
    or the height first, whichever keeps the ratio better; a tie takes the height-first one)."""
    ratio = width / height
    ow = (area * ratio) ** 0.5
    oh = area / ow
    w1 = int(ow // align * align)
    h2 = int(oh // align * align)
    h1 = int(area / w1 // align * align) if w1 else 0
    w2 = int(area / h2 // align * align) if h2 else 0
    if min(w1, h1) < align and min(w2, h2) < align:
        raise ValueError(f"image: its aspect ratio {width}x{height} leaves no {align}-pixel row or column in the "
                         f"requested area of {area} pixels; ask for a larger size or pass a less elongated image")
    if min(w2, h2) < align:
        return w1, h1
    if min(w1, h1) < align:
        return w2, h2
    r1, r2 = w1 / h1, w2 / h2
    return (w1, h1) if max(ratio / r1, r1 / ratio) < max(ratio / r2, r2 / ratio) else (w2, h2)


def _uint8(image: ConditionImage) -> np.ndarray:
    """The [H, W, 3] uint8 pixels back from [-1, 1] (exact: they were made from uint8)."""
    return ((image.pixels * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def cover_and_crop(image: ConditionImage, width: int, height: int) -> ConditionImage:
    """`image` scaled with Lanczos to cover width x height, then centre-cropped to it (official)."""
    from PIL import Image

    if (image.width, image.height) == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    size = (round(image.width * scale), round(image.height * scale))
    pil = Image.fromarray(_uint8(image)).resize(size, Image.LANCZOS)
    left, top = (pil.width - width) // 2, (pil.height - height) // 2
    pil = pil.crop((left, top, left + width, top + height))
    note = f"scaled (Lanczos) and centre-cropped from {image.width}x{image.height} to {width}x{height}"
    conversion = note if image.conversion is None else f"{image.conversion}; {note}"
    return ConditionImage(_to_unit_range(np.asarray(pil, dtype=np.uint8)), image.source, conversion)


def first_frame_prompt(first: ConditionImage, max_area: int, names: tuple[str, str]) -> ImagePrompt:
    """The checked and sized first frame of a TI2V request (`first` as read, kept so: it is
    scaled and cropped to the video's size when encoded, as Wan2.1's i2v image is resized then)."""
    width, height = best_output_size(first.width, first.height, FRAME_ALIGN, max_area)
    check_image_fits(first, width, height, names[0])
    return ImagePrompt(first, None, width, height, names)


@torch.no_grad()
def first_frame_latents(prompt: ImagePrompt, vae, device: torch.device, encode=None) -> torch.Tensor:
    """The first frame's normalized VAE latents [1, z_dim, 1, h, w], fp32 on `device` (the VAE in
    fp32, as the official; `encode`: `vae.encode` unless another encoder stands in)."""
    frame = cover_and_crop(prompt.first, prompt.width, prompt.height)
    video = frame.pixels[None, :, None].to(device=device, dtype=torch.float32)
    return (vae.encode if encode is None else encode)(video).float()
