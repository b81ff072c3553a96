"""The image conditioning of Wan2.1 I2V and FLF2V, as the official `image2video.py` and
`first_last_frame2video.py` build it.

- Images are read as RGB and mapped to [-1, 1] (`to_tensor(img).sub_(0.5).div_(0.5)`).
- The output size comes from the first image's aspect ratio and the requested area
  (`max_area`, the width x height asked for): `lat_h = round(sqrt(max_area * h / w) // 8 // 2 * 2)`,
  likewise `lat_w` with `w / h`; the video is `lat_h * 8` x `lat_w * 8`.
- The DiT's conditioning `y` [20, f, lat_h, lat_w] is a 4-channel frame mask (1 on the given
  frames) followed by the VAE latents of a video that holds the given frame(s), bicubically
  resized to the output size, and zeros elsewhere.
- The CLIP features are those of the image(s) at their own resolution (the encoder resizes to
  its 224 x 224 input); FLF2V stacks the first and the last image's rows.

Deliberate differences from the official code, both equal to it where it works:
- The official FLF2V mask is built for 81 frames whatever `frame_num` is (it fails otherwise);
  here it has the request's frame count (the same mask at 81).
- FLF2V with a last image of another size: the official code means to scale it to cover the first
  image and centre-crop it, but passes PIL's (width, height) to `center_crop`, which takes
  (height, width), and never resizes, so it pads the image with black. Here the last image is
  centre-cropped to the first image's aspect ratio (then resized with the first, as official).
  Images of the same size, the common case, are untouched by either.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MAX_IMAGE_SIDE = 8192  # a larger image is refused (decompression bombs; no video needs more)
MAX_UPSCALE = 2.0  # an image more than 2x smaller than the video on a side is too small for it
# Modes converted to RGB, each with what the conversion does; any other mode is refused.
CONVERTED_MODES = {
    "RGBA": "RGBA -> RGB: the alpha channel is dropped (not composited), as the official convert('RGB')",
    "LA": "grayscale+alpha -> RGB: the gray value in all three channels, the alpha channel dropped",
    "L": "grayscale -> RGB: the gray value in all three channels",
    "1": "1-bit -> RGB: black and white in all three channels",
    "P": "palette -> RGB: each index replaced by its palette colour (any transparency dropped)",
}


@dataclass(frozen=True)
class ConditionImage:
    """One conditioning image: pixels [3, H, W] float32 in [-1, 1] and where it came from."""

    pixels: torch.Tensor
    source: str
    conversion: str | None = None  # what was done to make it RGB (None: it was RGB)

    @property
    def height(self) -> int:
        return self.pixels.shape[1]

    @property
    def width(self) -> int:
        return self.pixels.shape[2]


def _reason(err: Exception) -> str:
    """Pillow's reason, without the in-memory buffer's repr it names when it knows no format."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not in an image format Pillow reads: PNG, JPEG, WebP, BMP, ..."
    return str(err)


def read_image(value, name: str) -> ConditionImage:
    """A path, PIL image or uint8 [H, W, 3] array -> ConditionImage; errors name `name`."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, ConditionImage):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise ValueError(f"{name}: an array must be uint8 [H, W, 3] RGB, got {value.dtype} {value.shape}")
        return ConditionImage(_to_unit_range(value), f"{name} (array)")
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{name}: no such image file: {path}")
        unreadable = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # a truncated or corrupt file fails here, not halfway into a run
            image = Image.open(io.BytesIO(data))
        except unreadable as e:
            raise ValueError(f"{name}: {path} is not a readable image ({_reason(e)})") from None
        _check_sides(image, name)  # from the header: a huge image is refused before its pixels are decoded
        try:
            image.load()
        except unreadable as e:
            raise ValueError(f"{name}: {path} is not a readable image ({_reason(e)})") from None
        source = str(path)
    elif isinstance(value, Image.Image):
        image, source = value, f"{name} (PIL image)"
    else:
        raise ValueError(f"{name} must be an image file path, a PIL image or a uint8 [H, W, 3] array, "
                         f"got {type(value).__name__}")
    _check_sides(image, name)
    conversion = None
    if image.mode != "RGB":
        if image.mode not in CONVERTED_MODES:
            raise ValueError(f"{name}: image mode {image.mode!r} is not supported; accepted: RGB, "
                             f"{', '.join(CONVERTED_MODES)} (convert it to 8-bit RGB first)")
        conversion = CONVERTED_MODES[image.mode]
        image = image.convert("RGB")
    return ConditionImage(_to_unit_range(np.asarray(image, dtype=np.uint8)), source, conversion)


def _check_sides(image, name: str) -> None:
    width, height = image.size
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
        raise ValueError(f"{name}: {width}x{height} is outside the accepted 1..{MAX_IMAGE_SIDE} pixels per side")


def _to_unit_range(rgb: np.ndarray) -> torch.Tensor:
    # The official `TF.to_tensor(img).sub_(0.5).div_(0.5)`, in the same float32 order of operations.
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div(255)  # a writable copy
    return pixels.sub_(0.5).div_(0.5)


def output_size(image: ConditionImage, max_area: int, vae_stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """(width, height) of the video for `image` and the requested area (the official rule); a
    ValueError when the image's aspect ratio leaves no latent row or column."""
    aspect = image.height / image.width
    lat_h = round(np.sqrt(max_area * aspect) // vae_stride // patch * patch)
    lat_w = round(np.sqrt(max_area / aspect) // vae_stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise ValueError(f"image: its aspect ratio {image.width}x{image.height} leaves no room in the requested "
                         f"area of {max_area} pixels (it gives {lat_w * vae_stride}x{lat_h * vae_stride}); "
                         f"ask for a larger size or pass a less elongated image")
    return lat_w * vae_stride, lat_h * vae_stride


def check_image_fits(image: ConditionImage, width: int, height: int, name: str) -> None:
    """Refuse an image more than MAX_UPSCALE times smaller than the video on either side."""
    if image.width * MAX_UPSCALE < width or image.height * MAX_UPSCALE < height:
        raise ValueError(f"{name}: {image.width}x{image.height} is too small for a {width}x{height} video "
                         f"(at least {math.ceil(width / MAX_UPSCALE)}x{math.ceil(height / MAX_UPSCALE)} is needed; "
                         f"ask for a smaller size or pass a larger image)")


def crop_to_aspect(image: ConditionImage, like: ConditionImage) -> ConditionImage:
    """`image` centre-cropped to the aspect ratio of `like` (unchanged when already equal)."""
    if (image.width, image.height) == (like.width, like.height):
        return image
    target = like.width / like.height
    width, height = image.width, image.height
    if width / height > target:
        width = max(1, round(height * target))
    else:
        height = max(1, round(width / target))
    top, left = (image.height - height) // 2, (image.width - width) // 2
    note = f"centre-cropped from {image.width}x{image.height} to {width}x{height} (the first image's aspect ratio)"
    conversion = note if image.conversion is None else f"{image.conversion}; {note}"
    return ConditionImage(image.pixels[:, top:top + height, left:left + width], image.source, conversion)


def frame_mask(num_frames: int, lat_h: int, lat_w: int, last: bool, temporal_stride: int = 4) -> torch.Tensor:
    """The official [temporal_stride, f, lat_h, lat_w] mask: 1 on the given frames (the first;
    with `last` also the last), frame 0 repeated `temporal_stride` times so that the frames fold
    into latent frames of `temporal_stride` each."""
    mask = torch.ones(1, num_frames, lat_h, lat_w)
    mask[:, 1:-1 if last else None] = 0
    mask = torch.cat([mask[:, :1].repeat_interleave(temporal_stride, dim=1), mask[:, 1:]], dim=1)
    return mask.view(1, mask.shape[1] // temporal_stride, temporal_stride, lat_h, lat_w).transpose(1, 2)[0]


def conditioning_video(first: ConditionImage, last: ConditionImage | None, num_frames: int,
                       width: int, height: int) -> torch.Tensor:
    """[1, 3, num_frames, height, width]: the image(s) bicubically resized (the official
    `interpolate(..., mode='bicubic')`, no clamp) on the given frames, zeros elsewhere."""
    def resized(image: ConditionImage) -> torch.Tensor:
        return F.interpolate(image.pixels[None], size=(height, width), mode="bicubic").transpose(0, 1)

    given = 2 if last is not None else 1
    if num_frames < given:
        raise ValueError(f"num_frames must be >= {given} with {given} given frame(s), got {num_frames}")
    parts = [resized(first), torch.zeros(3, num_frames - given, height, width)]
    if last is not None:
        parts.append(resized(last))
    return torch.cat(parts, dim=1)[None]


@dataclass(frozen=True)
class ImagePrompt:
    """The images of one I2V (first) or FLF2V (first and last) request, checked and sized."""

    first: ConditionImage
    last: ConditionImage | None
    width: int  # the video's size, from the first image's aspect ratio and the requested area
    height: int
    names: tuple[str, str] = ("image", "last_image")

    def conversions(self) -> list[str]:
        """What was done to each image to make it usable (RGB conversion, crop), one line each."""
        images = [(self.names[0], self.first)] + ([(self.names[1], self.last)] if self.last is not None else [])
        return [f"{name} ({image.source}): {image.conversion}" for name, image in images if image.conversion]


@torch.no_grad()
def condition_inputs(prompt: ImagePrompt, num_frames: int, vae, image_encoder, device: torch.device,
                     dtype: torch.dtype, encode=None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(clip_fea [1, T (flf2v 2T), D] in `dtype`, y [1, 4 + z_dim, f, lat_h, lat_w] fp32) on `device`;
    clip_fea None without an image encoder (Wan2.2 I2V-A14B: conditioned by y alone).

    The VAE encode runs in fp32 as the official one does (`encode`: `vae.encode` unless an exported
    encoder stands in); the image encoder in its own dtype."""
    cfg = vae.config
    lat_h, lat_w = prompt.height // cfg.spatial_stride, prompt.width // cfg.spatial_stride
    images = [prompt.first] + ([prompt.last] if prompt.last is not None else [])
    clip_fea = None if image_encoder is None else torch.cat(
        [image_encoder.encode(image.pixels[None].to(device)) for image in images], dim=1)
    video = conditioning_video(prompt.first, prompt.last, num_frames, prompt.width, prompt.height)
    latents = (vae.encode if encode is None else encode)(video.to(device=device, dtype=torch.float32))
    mask = frame_mask(num_frames, lat_h, lat_w, prompt.last is not None, cfg.temporal_stride).to(device)
    y = torch.cat([mask[None], latents.float()], dim=1)
    return None if clip_fea is None else clip_fea.to(dtype), y
