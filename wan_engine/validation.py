"""Request validation shared by the Python API and the CLI: every message names the parameter."""
from __future__ import annotations

import math
import operator
import os
from pathlib import Path

SOLVERS = ("unipc", "dpm++", "euler")
SEED_BOUND = 2**63  # seeds are in [0, 2**63), the official range (sys.maxsize) and the parallel broadcast's


def check_size(size, multiple: int = 16) -> tuple[int, int]:
    """(width, height), each a positive multiple of `multiple` pixels: the model's VAE stride x
    patch size (16 for Wan2.1's VAE, 32 for Wan2.2's TI2V-5B VAE, `ModelConfig.size_multiple`)."""
    try:
        # operator.index refuses floats, so (832.5, 480) is an error rather than a silent 832.
        width, height = (operator.index(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be two integers (width, height), got {size!r}") from None
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        examples = "832x480 or 1280x720" if 720 % multiple == 0 else "832x480 or 1280x704"
        raise ValueError(
            f"size must be positive multiples of {multiple} (the VAE's stride x the DiT's patch), got "
            f"{width}x{height}; e.g. {examples}"
        )
    return width, height


def check_num_frames(num_frames: int) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4n+1 (1, 5, 9, ..., 81), got {num_frames!r}")
    return num_frames


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _finite_number(name: str, value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):  # inf guidance turns the whole video into NaN
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def check_guidance(guidance: float, name: str = "guidance") -> float:
    guidance = _finite_number(name, guidance)
    if guidance < 0.0:
        raise ValueError(f"{name} must be >= 0, got {guidance}")
    return guidance


def check_shift(shift: float) -> float:
    shift = _finite_number("shift", shift)
    if not shift > 0.0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_BOUND:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return solver


def check_fps(fps) -> float:
    fps = _finite_number("fps", fps)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return fps


def check_output_file(path, name: str, suffix: str) -> Path:
    """A file path a run may write: `suffix` (e.g. ".mp4"), not a directory, and under a folder
    the user can write (missing folders are created by the writer, so the nearest existing one
    counts). Checked before a long generation so that it cannot fail at the very end."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a directory; name a file inside it, e.g. {path / ('out' + suffix)}")
    if path.suffix.lower() != suffix:
        raise ValueError(f"{name} must name a {suffix} file, got {str(path)!r}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(path)!r} cannot be written: {folder} is not a writable folder")
    return path
