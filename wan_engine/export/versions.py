"""The package releases an export needs, checked by name before any work."""
from __future__ import annotations

import re

# torch 2.9's dynamo exporter fails on every graph of ours, whose shapes are dynamic: decomposing the
# exported program raises "NameError: name 'L' is not defined" in its shape-guard function
# (pytorch/pytorch#172903; checked here with the DiT, the VAE decoder and the encoder: 2.9.1 fails
# at each, 2.10.0 exports them and its exports run as 2.13's do).
EXPORT_MIN_TORCH = (2, 10)


def release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as "2.10.0+cu128" or "1.30.0.dev20261101"."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_torch_for_export(version: str) -> None:
    """Refuse by name a torch whose ONNX exporter cannot trace our graphs."""
    if release(version) < EXPORT_MIN_TORCH:
        need = ".".join(map(str, EXPORT_MIN_TORCH))
        raise ValueError(f"exporting to ONNX needs torch >= {need}; this is torch {version}, whose exporter fails on "
                         f"the graphs' dynamic shapes (pytorch/pytorch#172903): pip install 'torch>={need}' to "
                         f"export (the rest of the engine runs on this torch)")
