"""Calibrations: the TeaCache polynomials and MagCache ratios of one model, published or fitted.

A calibration file (`wan-engine calibrate` writes one; a model folder may hold one named
`cache_calibration.json`) is plain JSON:

    {"format": "wan_engine.cache_calibration/1", "model": "shapes",
     "teacache": {"plain": [c4, c3, c2, c1, c0], "ret_steps": [...]},
     "magcache": {"cond": [1.0, r1, ...], "uncond": [1.0, r1, ...]},
     "fitted": {...how it was measured...},
     "thresholds": {"teacache": 0.1, "fbcache": 0.15}}   # optional: this model's recommended thresholds

Either policy's entry may be missing; asking for it then fails with a message naming the fix.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .published import MAGCACHE_RATIOS, TEACACHE_COEFFICIENTS

FORMAT = "wan_engine.cache_calibration/1"
FILE_NAME = "cache_calibration.json"
TEACACHE_MODES = ("plain", "ret_steps")
MAX_FILE_BYTES = 1 << 20  # a calibration is a few KB; refuse anything that is not one


@dataclass(frozen=True)
class Calibration:
    """model: what it calibrates (a published name or a folder); source: where it was read.
    teacache: mode -> polynomial coefficients (highest power first); magcache: per branch
    (conditional, unconditional) ratios, one per step, index 0 the padding 1.0."""

    model: str
    source: str
    teacache: dict[str, tuple[float, ...]] = field(default_factory=dict)
    magcache: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    fitted: dict = field(default_factory=dict)
    # Recommended thresholds per policy for this model (what `--cache POLICY` without a threshold uses).
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for mode, coefficients in self.teacache.items():
            if mode not in TEACACHE_MODES:
                raise ValueError(f"{self.source}: teacache mode must be one of {', '.join(TEACACHE_MODES)}; got {mode!r}")
            _check_numbers(coefficients, f"{self.source}: teacache.{mode}", positive=False)
        if self.magcache is not None:
            if len(self.magcache) != 2 or len(self.magcache[0]) != len(self.magcache[1]):
                raise ValueError(f"{self.source}: magcache needs cond and uncond ratios of one length")
            for name, ratios in zip(("cond", "uncond"), self.magcache):
                _check_numbers(ratios, f"{self.source}: magcache.{name}", positive=True)

    def teacache_coefficients(self, ret_steps: bool) -> tuple[float, ...]:
        mode = "ret_steps" if ret_steps else "plain"
        if mode not in self.teacache:
            raise ValueError(f"the cache calibration of {self.model} ({self.source}) has no TeaCache {mode} "
                             f"coefficients: run `wan-engine calibrate --cache teacache --model ...` and pass "
                             f"the file with --cache-calibration")
        return self.teacache[mode]

    def magcache_ratios(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.magcache is None:
            raise ValueError(f"the cache calibration of {self.model} ({self.source}) has no MagCache ratios: run "
                             f"`wan-engine calibrate --cache magcache --model ...` and pass the file with "
                             f"--cache-calibration")
        return self.magcache

    def to_json(self) -> dict:
        data = {"format": FORMAT, "model": self.model,
                "teacache": {mode: list(c) for mode, c in self.teacache.items()}}
        if self.magcache is not None:
            data["magcache"] = {"cond": list(self.magcache[0]), "uncond": list(self.magcache[1])}
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
        magcache = data.get("magcache")
        if not isinstance(teacache, dict) or (magcache is not None and not isinstance(magcache, dict)):
            raise ValueError(f"{source}: teacache and magcache must be JSON objects")
        ratios = None
        if magcache is not None:
            if set(magcache) != {"cond", "uncond"}:
                raise ValueError(f"{source}: magcache must hold exactly \"cond\" and \"uncond\"")
            ratios = (_floats(magcache["cond"], source), _floats(magcache["uncond"], source))
        thresholds = data.get("thresholds", {})
        if not isinstance(thresholds, dict) or not all(
                k in ("teacache", "magcache", "fbcache") and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and v >= 0 for k, v in thresholds.items()):
            raise ValueError(f"{source}: thresholds must map teacache/magcache/fbcache to finite numbers >= 0")
        return cls(str(data.get("model", "?")), source, {m: _floats(c, source) for m, c in teacache.items()},
                   ratios, dict(data.get("fitted", {})), {k: float(v) for k, v in thresholds.items()})

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
    """The published calibration of an official model name (t2v-1.3B, t2v-14B, i2v-14B-480p,
    i2v-14B-720p), or None."""
    if model not in TEACACHE_COEFFICIENTS and model not in MAGCACHE_RATIOS:
        return None
    return Calibration(model, "published", dict(TEACACHE_COEFFICIENTS.get(model, {})), MAGCACHE_RATIOS.get(model))


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


def _floats(values, source: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise ValueError(f"{source}: expected a list of numbers, got {str(values)[:80]}")
    return tuple(float(v) for v in values)


def _check_numbers(values, what: str, positive: bool) -> None:
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"{what} must be a non-empty list of finite{' positive' if positive else ''} numbers")
