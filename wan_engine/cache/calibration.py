"""Calibrations: the TeaCache polynomials and MagCache ratios of one model, published or fitted.

A calibration file (`wan-engine calibrate` writes one; a model folder may hold one named
`cache_calibration.json`) is plain JSON:

    {"format": "wan_engine.cache_calibration/1", "model": "shapes",
     "teacache": {"plain": [c4, c3, c2, c1, c0], "ret_steps": [...]},
     "magcache": {"cond": [1.0, r1, ...], "uncond": [1.0, r1, ...]},
     "magcache_image": {"cond": [...], "uncond": [...]},  # optional: image-conditioned requests
     "fitted": {...how it was measured...},
     "thresholds": {"teacache": 0.1, "fbcache": 0.15}}   # optional: this model's recommended thresholds

Either policy's entry may be missing; asking for it then fails with a message naming the fix.
`magcache_image` is for a model that runs both text- and image-to-video (TI2V-5B), whose residuals
evolve differently with an image; without it `magcache` serves both kinds of request.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .published import MAGCACHE_IMAGE_RATIOS, MAGCACHE_RATIOS, RECOMMENDED_THRESHOLDS, TEACACHE_COEFFICIENTS

FORMAT = "wan_engine.cache_calibration/1"
FILE_NAME = "cache_calibration.json"
TEACACHE_MODES = ("plain", "ret_steps")
MAX_FILE_BYTES = 1 << 20  # a calibration is a few KB; refuse anything that is not one


@dataclass(frozen=True)
class Calibration:
    """model: what it calibrates (a published name or a folder); source: where it was read.
    teacache: mode -> polynomial coefficients (highest power first); magcache: per branch
    (conditional, unconditional) ratios, one per step, index 0 the padding 1.0; magcache_image:
    the same for image-conditioned requests, where they were calibrated apart."""

    model: str
    source: str
    teacache: dict[str, tuple[float, ...]] = field(default_factory=dict)
    magcache: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    fitted: dict = field(default_factory=dict)
    # Recommended thresholds per policy for this model (what `--cache POLICY` without a threshold uses).
    thresholds: dict[str, float] = field(default_factory=dict)
    magcache_image: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self):
        for mode, coefficients in self.teacache.items():
            if mode not in TEACACHE_MODES:
                raise ValueError(f"{self.source}: teacache mode must be one of {', '.join(TEACACHE_MODES)}; got {mode!r}")
            _check_numbers(coefficients, f"{self.source}: teacache.{mode}", positive=False)
        for key, pair in (("magcache", self.magcache), ("magcache_image", self.magcache_image)):
            if pair is None:
                continue
            if len(pair) != 2 or len(pair[0]) != len(pair[1]):
                raise ValueError(f"{self.source}: {key} needs cond and uncond ratios of one length")
            for name, ratios in zip(("cond", "uncond"), pair):
                _check_numbers(ratios, f"{self.source}: {key}.{name}", positive=True)
        if self.magcache_image is not None and self.magcache is None:
            raise ValueError(f"{self.source}: magcache_image needs the text-to-video magcache ratios beside it")

    def teacache_coefficients(self, ret_steps: bool) -> tuple[float, ...]:
        mode = "ret_steps" if ret_steps else "plain"
        if mode not in self.teacache:
            raise ValueError(f"the cache calibration of {self.model} ({self.source}) has no TeaCache {mode} "
                             f"coefficients: run `wan-engine calibrate --cache teacache --model ...` and pass "
                             f"the file with --cache-calibration")
        return self.teacache[mode]

    def magcache_ratios(self, image: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The ratios for a request with (`image`) or without an image condition."""
        if self.magcache is None:
            raise ValueError(f"the cache calibration of {self.model} ({self.source}) has no MagCache ratios: run "
                             f"`wan-engine calibrate --cache magcache --model ...` and pass the file with "
                             f"--cache-calibration")
        return self.magcache_image if image and self.magcache_image is not None else self.magcache

    def to_json(self) -> dict:
        data = {"format": FORMAT, "model": self.model,
                "teacache": {mode: list(c) for mode, c in self.teacache.items()}}
        if self.magcache is not None:
            data["magcache"] = {"cond": list(self.magcache[0]), "uncond": list(self.magcache[1])}
        if self.magcache_image is not None:
            data["magcache_image"] = {"cond": list(self.magcache_image[0]), "uncond": list(self.magcache_image[1])}
        if self.fitted:
            data["fitted"] = self.fitted
        if self.thresholds:
            data["thresholds"] = dict(self.thresholds)
        return data

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a partial file never carries the real name)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(partial, path)
        return path

    @classmethod
    def from_json(cls, data, source: str) -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source}: not a cache calibration (expected \"format\": \"{FORMAT}\")")
        teacache = data.get("teacache", {})
        if not isinstance(teacache, dict):
            raise ValueError(f"{source}: teacache must be a JSON object")
        ratios, image_ratios = (_ratio_pair(data.get(key), key, source) for key in ("magcache", "magcache_image"))
        thresholds = data.get("thresholds", {})
        if not isinstance(thresholds, dict) or not all(
                k in ("teacache", "magcache", "fbcache") and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and v >= 0 for k, v in thresholds.items()):
            raise ValueError(f"{source}: thresholds must map teacache/magcache/fbcache to finite numbers >= 0")
        return cls(str(data.get("model", "?")), source, {m: _floats(c, source) for m, c in teacache.items()},
                   ratios, dict(data.get("fitted", {})), {k: float(v) for k, v in thresholds.items()},
                   image_ratios)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"cache calibration {path} does not exist")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"cache calibration {path} is over {MAX_FILE_BYTES} bytes: not a calibration file")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cache calibration {path} is not valid JSON ({e})") from e
        return cls.from_json(data, str(path))


def published(model: str) -> Calibration | None:
    """The published calibration of an official model name, or None: TeaCache and MagCache for
    t2v-1.3B, t2v-14B, i2v-14B-480p and i2v-14B-720p; MagCache alone for t2v-A14B, i2v-A14B and
    ti2v-5B (with the publication's MagCache threshold, 0.06, as the recommended one)."""
    if model not in TEACACHE_COEFFICIENTS and model not in MAGCACHE_RATIOS:
        return None
    return Calibration(model, "published", dict(TEACACHE_COEFFICIENTS.get(model, {})), MAGCACHE_RATIOS.get(model),
                       thresholds=dict(RECOMMENDED_THRESHOLDS.get(model, {})),
                       magcache_image=MAGCACHE_IMAGE_RATIOS.get(model))


def resolve_calibration(spec: str | None, model_default: Calibration | None, model_name: str) -> Calibration:
    """The calibration a request uses: `spec` (a published name or a file), else the model's own."""
    if spec is not None:
        named = published(spec)
        return named if named is not None else Calibration.load(spec)
    if model_default is None:
        names = ", ".join(sorted(set(TEACACHE_COEFFICIENTS) | set(MAGCACHE_RATIOS)))
        raise ValueError(f"no cache calibration for {model_name}: pass --cache-calibration FILE (from "
                         f"`wan-engine calibrate`) or a published model name ({names})")
    return model_default


def _ratio_pair(entry, key: str, source: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) != {"cond", "uncond"}:
        raise ValueError(f"{source}: {key} must be a JSON object holding exactly \"cond\" and \"uncond\"")
    return _floats(entry["cond"], source), _floats(entry["uncond"], source)


def _floats(values, source: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise ValueError(f"{source}: expected a list of numbers, got {str(values)[:80]}")
    return tuple(float(v) for v in values)


def _check_numbers(values, what: str, positive: bool) -> None:
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"{what} must be a non-empty list of finite{' positive' if positive else ''} numbers")
