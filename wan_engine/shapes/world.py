"""The `shapes` world: one coloured shape moving in one direction over a plain background.

Every clip is drawn on the fly from a seed (no data files): a circle, square or triangle of one of
seven saturated colours moves left, right, up or down over a black, white or gray background.
Captions follow one grammar, `a {color} {shape} moving {direction} on a {background} background`.
A fixed, documented set of combinations (`HELD_OUT`) never appears in training, so prompt
adherence can be measured on prompts the model has not seen.

Clips are float32 `[3, F, H, W]` in [-1, 1] (the VAE's input range); edges are anti-aliased so
the VAE sees smooth boundaries.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

# Saturated and pairwise distinct (RGB, 0-255). Foreground and background palettes share only white.
COLORS = {
    "red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 70, 235), "yellow": (240, 220, 30),
    "cyan": (30, 215, 225), "magenta": (220, 40, 220), "white": (245, 245, 245),
}
BACKGROUNDS = {"black": (12, 12, 12), "white": (245, 245, 245), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image axes: y grows down


@dataclass(frozen=True)
class Combo:
    color: str
    shape: str
    direction: str
    background: str

    def __post_init__(self):
        for name, value, allowed in (("color", self.color, COLORS), ("shape", self.shape, SHAPES),
                                     ("direction", self.direction, DIRECTIONS),
                                     ("background", self.background, BACKGROUNDS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if COLORS[self.color] == BACKGROUNDS[self.background]:
            raise ValueError(f"a {self.color} shape on a {self.background} background is invisible")

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} on a {self.background} background"


def all_combos() -> list[Combo]:
    """Every valid combination (the foreground never has the background's colour): 240."""
    combos = []
    for color, shape, direction, background in itertools.product(COLORS, SHAPES, DIRECTIONS, BACKGROUNDS):
        if COLORS[color] != BACKGROUNDS[background]:
            combos.append(Combo(color, shape, direction, background))
    return combos


def _held_out() -> tuple[Combo, ...]:
    """Every 10th combination of `all_combos()` (24 of 240), offset 3: each colour, shape,
    direction and background still appears in training, only these pairings do not."""
    return tuple(all_combos()[3::10])


HELD_OUT: tuple[Combo, ...] = _held_out()
_HELD_OUT_SET = frozenset(HELD_OUT)


def training_combos() -> list[Combo]:
    return [c for c in all_combos() if c not in _HELD_OUT_SET]


def parse_caption(caption: str) -> Combo:
    """The combination a caption of the world's grammar names (ValueError otherwise)."""
    words = caption.strip().split()
    if len(words) != 9 or [words[i] for i in (0, 3, 5, 6, 8)] != ["a", "moving", "on", "a", "background"]:
        raise ValueError(f"caption must read 'a {{color}} {{shape}} moving {{direction}} on a {{background}} "
                         f"background'; got {caption!r}")
    return Combo(words[1], words[2], words[4], words[7])


@dataclass(frozen=True)
class ClipSpec:
    """Where a clip's shape starts, how big it is and how fast it moves (pixels, pixels per frame)."""

    combo: Combo
    center: tuple[float, float]  # (x, y) at frame 0
    radius: float
    speed: float


def sample_spec(combo: Combo, size: tuple[int, int], frames: int, generator: torch.Generator) -> ClipSpec:
    """A placement whose path is centred in the frame (midpoint within +-6 % of the side of the
    centre), radius 20-26 % of the smaller side, total travel 25-40 % of the side. Large shapes on
    a central path make the caption's colour and direction weigh in the training loss even at high
    noise, where the model cannot yet see where the shape is (with paths anywhere, the mean clip
    of a caption is a faint smear and its colour barely moves the loss)."""
    width, height = size
    side = min(width, height)
    u = torch.rand(4, generator=generator).tolist()
    radius = side * (0.20 + 0.06 * u[0])
    travel = side * (0.25 + 0.15 * u[1])
    speed = travel / max(frames - 1, 1)
    dx, dy = DIRECTIONS[combo.direction]
    mid_x = width / 2 + side * 0.12 * (u[2] - 0.5)
    mid_y = height / 2 + side * 0.12 * (u[3] - 0.5)
    return ClipSpec(combo, (mid_x - dx * travel / 2, mid_y - dy * travel / 2), radius, speed)


def _signed_distance(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed distance (pixels, negative inside) from the shape centred at the origin."""
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":
        half = radius * 0.85  # about the circle's area
        return torch.maximum(dx.abs(), dy.abs()) - half
    # Equilateral triangle pointing up, circumradius 1.25 * radius: the max of three half-planes.
    r = radius * 1.25
    inradius = r / 2
    normals = ((0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5))  # outward, y down
    return torch.stack([nx * dx + ny * dy for nx, ny in normals]).amax(0) - inradius


def render(spec: ClipSpec, size: tuple[int, int], frames: int) -> torch.Tensor:
    """The clip `[3, frames, H, W]` float32 in [-1, 1]."""
    width, height = size
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    fg = torch.tensor(COLORS[spec.combo.color], dtype=torch.float32)[:, None, None] / 127.5 - 1
    bg = torch.tensor(BACKGROUNDS[spec.combo.background], dtype=torch.float32)[:, None, None] / 127.5 - 1
    dx_dir, dy_dir = DIRECTIONS[spec.combo.direction]
    out = torch.empty(3, frames, height, width)
    for f in range(frames):
        cx = spec.center[0] + dx_dir * spec.speed * f
        cy = spec.center[1] + dy_dir * spec.speed * f
        alpha = (0.5 - _signed_distance(spec.combo.shape, xs - cx, ys - cy, spec.radius)).clamp(0, 1)
        out[:, f] = bg + (fg - bg) * alpha
    return out


def make_clip(combo: Combo, size: tuple[int, int] = (96, 96), frames: int = 17, seed: int = 0) -> torch.Tensor:
    """One clip of `combo`, placed from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return render(sample_spec(combo, size, frames, generator), size, frames)


def random_clips(count: int, size: tuple[int, int], frames: int, seed: int, combos: list[Combo] | None = None
                 ) -> tuple[torch.Tensor, list[Combo]]:
    """`count` clips `[count, 3, F, H, W]` of combinations drawn uniformly from `combos`
    (default: the training set), with their combinations."""
    combos = training_combos() if combos is None else combos
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(combos), (count,), generator=generator).tolist()
    chosen = [combos[i] for i in picks]
    clips = torch.stack([render(sample_spec(c, size, frames, generator), size, frames) for c in chosen])
    return clips, chosen
