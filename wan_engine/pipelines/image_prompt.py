"""A request's conditioning images, read, checked and sized for the model's task, before any
compute: Wan2.1 I2V/FLF2V (`image_condition`) or Wan2.2 TI2V (`first_frame`)."""
from __future__ import annotations

from .first_frame import first_frame_prompt
from .image_condition import ImagePrompt, check_image_fits, crop_to_aspect, output_size, read_image

IMAGE_OPTIONAL = ("t2v", "ti2v")  # tasks whose requests may come without an image


def image_prompt(image, last_image, max_area: int, task: str,
                 names: tuple[str, str] = ("image", "last_image")) -> ImagePrompt:
    """Read and check a request's images for a model of `task` (`DiTConfig.task`: t2v, i2v,
    flf2v, ti2v); every error names the option (`names`: how the caller spells the two, e.g. the
    CLI's flags). Nothing is loaded onto a device."""
    first_name, last_name = names
    if task == "ti2v":
        if last_image is not None:
            raise ValueError(f"{last_name}: a TI2V model (Wan2.2 TI2V-5B) takes a first frame only")
        if image is None:
            raise ValueError(f"{first_name} is required for image-to-video (leave it out for text-to-video)")
        return first_frame_prompt(read_image(image, first_name), max_area, names)
    model_type = task
    if model_type == "t2v":
        given = first_name if image is not None else last_name
        raise ValueError(f"{given}: this is a text-to-video model; {first_name} and {last_name} need an i2v, "
                         f"flf2v or ti2v model")
    if image is None:
        if last_image is not None:
            raise ValueError(f"{last_name} needs {first_name} (the first frame) as well")
        raise ValueError(f"{first_name} is required: a {model_type} model generates from a first frame")
    if model_type == "i2v" and last_image is not None:
        raise ValueError(f"{last_name}: an i2v model takes the first frame only; first-last-frame needs an "
                         f"flf2v model")
    if model_type == "flf2v" and last_image is None:
        raise ValueError(f"{last_name} is required: an flf2v model generates between a first and a last frame")
    first = read_image(image, first_name)
    width, height = output_size(first, max_area)
    check_image_fits(first, width, height, first_name)
    last = None
    if last_image is not None:
        last = crop_to_aspect(read_image(last_image, last_name), first)
        check_image_fits(last, width, height, last_name)
    return ImagePrompt(first, last, width, height, names)
