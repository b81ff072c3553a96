"""Prompt adherence on the `shapes` world, measured without a learned model.

For a clip (uint8 `[F, H, W, 3]`) the scorer reads three things off the pixels:
- the background colour: the median colour of the frame borders, matched to the nearest of the
  world's backgrounds;
- the foreground colour: the median colour of the pixels far from that background, matched to the
  nearest of the world's shape colours (the background's own colour excluded);
- the motion direction: the least-squares slope of the foreground centroid over the frames; the
  larger of the x and y slopes gives the axis, its sign the direction (image y grows downwards).
A prompt's answers come from its caption (`wan_engine.shapes.world.parse_caption`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wan_engine.shapes.world import BACKGROUNDS, COLORS, Combo

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that marks a foreground pixel
MIN_FOREGROUND_PIXELS = 20  # per frame, for its centroid to count
MIN_TRAVEL_PX = 2.0  # total centroid travel below which no direction is read


@dataclass(frozen=True)
class ClipReading:
    """What the scorer reads off one clip (None where it finds nothing to read)."""

    background: str
    color: str | None
    direction: str | None
    foreground_fraction: float
    travel_px: float


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = [np.linalg.norm(rgb - np.asarray(palette[n], dtype=np.float64)) for n in names]
    return names[int(np.argmin(distances))]


def read_clip(frames: np.ndarray) -> ClipReading:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    if h < 8 or w < 8:
        raise ValueError(f"frames must be at least 8x8, got {h}x{w}")
    pixels = frames.astype(np.float64)
    border = np.concatenate([pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3),
                             pixels[:, :, :2].reshape(-1, 3), pixels[:, :, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    mask = np.linalg.norm(pixels - bg_rgb, axis=-1) > FOREGROUND_DISTANCE  # [F, H, W]
    fraction = float(mask.mean())
    if mask.sum() < MIN_FOREGROUND_PIXELS:
        return ClipReading(background, None, None, fraction, 0.0)
    palette = {k: v for k, v in COLORS.items() if v != BACKGROUNDS[background]}
    color = _nearest(np.median(pixels[mask], axis=0), palette)
    ys, xs = np.mgrid[0:h, 0:w]
    t, cx, cy = [], [], []
    for i in range(f):
        n = mask[i].sum()
        if n >= MIN_FOREGROUND_PIXELS:
            t.append(i)
            cx.append((xs * mask[i]).sum() / n)
            cy.append((ys * mask[i]).sum() / n)
    if len(t) < 2:
        return ClipReading(background, color, None, fraction, 0.0)
    slope_x, slope_y = np.polyfit(t, cx, 1)[0], np.polyfit(t, cy, 1)[0]
    travel = float(np.hypot(slope_x, slope_y) * (t[-1] - t[0]))
    if travel < MIN_TRAVEL_PX:
        return ClipReading(background, color, None, fraction, travel)
    if abs(slope_x) >= abs(slope_y):
        direction = "right" if slope_x > 0 else "left"
    else:
        direction = "down" if slope_y > 0 else "up"
    return ClipReading(background, color, direction, fraction, travel)


def score(reading: ClipReading, combo: Combo) -> dict[str, bool]:
    """{"color", "background", "direction"}: whether the clip shows what the caption asks."""
    return dict(color=reading.color == combo.color, background=reading.background == combo.background,
                direction=reading.direction == combo.direction)


def accuracy(scores: list[dict[str, bool]]) -> dict[str, float]:
    """The fraction correct of each attribute over `scores` (empty: NaN)."""
    keys = ("color", "background", "direction")
    if not scores:
        return {k: float("nan") for k in keys}
    return {k: sum(s[k] for s in scores) / len(scores) for k in keys}
