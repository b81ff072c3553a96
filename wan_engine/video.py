"""Writing and reading H.264 MP4 files through the static ffmpeg that imageio-ffmpeg ships."""
from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

import numpy as np

from .validation import check_fps, check_output_file

WAN_FPS = 16  # Wan2.1 is trained on and exports 16 fps video


def save_video(frames: np.ndarray, path: str | Path, fps: int = WAN_FPS, quality: int = 8) -> Path:
    """Write uint8 frames `[F, H, W, 3]` as an H.264 (yuv420p) MP4.

    The file is written under a temporary name and renamed when complete, so an interrupted or
    failed write never leaves a truncated video behind under the requested name. `path` must end
    in .mp4; missing folders are created.
    """
    import imageio_ffmpeg

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num, height, width, _ = frames.shape
    if num < 1 or height % 2 or width % 2:
        raise ValueError(f"H.264 needs at least one frame and even sizes, got {width}x{height}, {num} frames")
    check_fps(fps)
    path = check_output_file(path, "path", ".mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    # ffmpeg creates the temporary file itself, so it gets the usual permissions (a mkstemp file
    # is 0600, and the rename would keep that).
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.mp4")
    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", quality=quality,
            pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        # imageio-ffmpeg does not check ffmpeg's exit status: a run that failed at its start or
        # while finishing leaves an empty file or one without the index (moov) box.
        if not _has_moov_box(tmp):
            raise OSError(f"ffmpeg did not produce a complete MP4 for {path} (see its messages above)")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _has_moov_box(path: Path) -> bool:
    """Whether an MP4 file's top-level boxes include 'moov', which ffmpeg writes when it finishes."""
    if not path.is_file():
        return False
    end = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + 8 <= end:
            fh.seek(offset)
            size, kind = struct.unpack(">I4s", fh.read(8))
            if kind == b"moov":
                return True
            if size == 1:  # 64-bit size follows the type
                size = struct.unpack(">Q", fh.read(8))[0]
            if size < 8:  # 0 means "to the end of the file"; anything else below 8 is corrupt
                return False
            offset += size
    return False


def read_video(path: str | Path) -> np.ndarray:
    """Decode an MP4 back into uint8 frames `[F, H, W, 3]` (used to check what was written)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames)
