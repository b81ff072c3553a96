"""Writing and reading H.264 MP4 files through the static ffmpeg that imageio-ffmpeg ships."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

WAN_FPS = 16  # Wan2.1 is trained on and exports 16 fps video


def save_video(frames: np.ndarray, path: str | Path, fps: int = WAN_FPS, quality: int = 8) -> Path:
    """Write uint8 frames `[F, H, W, 3]` as an H.264 (yuv420p) MP4.

    The file is written under a temporary name and renamed when complete, so an interrupted write
    never leaves a truncated video behind under the requested name.
    """
    import imageio_ffmpeg

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num, height, width, _ = frames.shape
    if num < 1 or height % 2 or width % 2:
        raise ValueError(f"H.264 needs at least one frame and even sizes, got {width}x{height}, {num} frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            tmp, (width, height), fps=fps, codec="libx264", quality=quality,
            pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode an MP4 back into uint8 frames `[F, H, W, 3]` (used to check what was written)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames)
