"""`CacheConfig`: which step-cache policy a request uses, with its parameters, validated.

    CacheConfig.parse("teacache:0.2")                  # plain mode, threshold 0.2
    CacheConfig.parse("teacache:0.2,ret_steps")        # e0 signal, first 5 steps always computed
    CacheConfig.parse("magcache:0.12,K=2,retention=0.2")
    CacheConfig.parse("fbcache:0.05")

Every policy is lossy except at threshold 0, which computes every step (bit for bit uncached).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

POLICIES = ("teacache", "magcache", "fbcache")
# The published defaults: MagCache's own (0.12, K 2, retention 0.2); TeaCache's faster published
# setting for Wan2.1 (0.2, about 3x on T2V-1.3B); FBCache's threshold as in ParaAttention's examples.
DEFAULT_THRESHOLD = {"teacache": 0.2, "magcache": 0.12, "fbcache": 0.05}
DEFAULT_MAX_SKIPS = 2
DEFAULT_RETENTION = 0.2


@dataclass(frozen=True)
class CacheConfig:
    """policy: "teacache", "magcache" or "fbcache".
    threshold: the accumulated-change bound under which a step reuses the cached residual (>= 0);
      None takes the model's recommended threshold (its calibration's `thresholds`), else the
      policy's published default (`DEFAULT_THRESHOLD`).
    ret_steps: TeaCache only: the `use_ret_steps` mode (signal e0, first 5 steps always computed).
    max_skips: MagCache only (its K): the most consecutive reused steps per branch (>= 1).
    retention: MagCache only: the fraction of the first steps that are always computed, in [0, 1].
    calibration: a calibration JSON file or a published model name (e.g. "t2v-1.3B"); None takes
      the model folder's `cache_calibration.json`, else the published set of the model's name.
    """

    policy: str
    threshold: float | None = None
    ret_steps: bool = False
    max_skips: int = DEFAULT_MAX_SKIPS
    retention: float = DEFAULT_RETENTION
    calibration: str | None = None

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"cache policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        threshold = self.threshold
        if threshold is not None:  # None: the model's recommended threshold, else DEFAULT_THRESHOLD
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                    math.isfinite(threshold) and threshold >= 0):
                raise ValueError(f"cache threshold must be a finite number >= 0; got {self.threshold!r}")
            object.__setattr__(self, "threshold", float(threshold))
        if not isinstance(self.ret_steps, bool):
            raise ValueError(f"cache ret_steps must be True or False; got {self.ret_steps!r}")
        if self.ret_steps and self.policy != "teacache":
            raise ValueError(f"ret_steps is a TeaCache option; the policy is {self.policy}")
        if isinstance(self.max_skips, bool) or not isinstance(self.max_skips, int) or self.max_skips < 1:
            raise ValueError(f"cache K (max_skips) must be an int >= 1; got {self.max_skips!r}")
        if isinstance(self.retention, bool) or not isinstance(self.retention, (int, float)) or not (
                0 <= self.retention <= 1):
            raise ValueError(f"cache retention must be in [0, 1]; got {self.retention!r}")
        if self.policy != "magcache" and (self.max_skips != DEFAULT_MAX_SKIPS or self.retention != DEFAULT_RETENTION):
            raise ValueError(f"K and retention are MagCache options; the policy is {self.policy}")
        if self.calibration is not None and (not isinstance(self.calibration, str) or not self.calibration):
            raise ValueError(f"cache calibration must be a file path or a model name; got {self.calibration!r}")

    def with_default_threshold(self, recommended: dict | None = None) -> "CacheConfig":
        """This config with its threshold filled in when none was given: the model's recommended
        one for this policy (a calibration's `thresholds`), else the policy's published default."""
        if self.threshold is not None:
            return self
        value = (recommended or {}).get(self.policy, DEFAULT_THRESHOLD[self.policy])
        return dataclasses.replace(self, threshold=float(value))

    @property
    def needs_calibration(self) -> bool:
        return self.policy in ("teacache", "magcache")

    def describe(self) -> str:
        if self.threshold is None:
            return f"{self.policy} (default threshold)"
        if self.policy == "teacache":
            return f"teacache {self.threshold:g}" + (" ret_steps" if self.ret_steps else " plain")
        if self.policy == "magcache":
            return f"magcache {self.threshold:g} K={self.max_skips} retention={self.retention:g}"
        return f"fbcache {self.threshold:g}"

    @classmethod
    def parse(cls, text: str, calibration: str | None = None) -> "CacheConfig":
        """`policy[:threshold][,option...]` as the CLI's --cache takes it (see the module doc)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"--cache must look like teacache:0.2, magcache:0.12,K=2,retention=0.2 or "
                             f"fbcache:0.05; got {text!r}")
        policy, _, rest = text.strip().partition(":")
        options = [part.strip() for part in rest.split(",")] if rest else []
        fields: dict = {}
        if options and "=" not in options[0] and options[0] != "ret_steps":
            fields["threshold"] = _number(options.pop(0), "threshold", float)
        for option in options:
            key, eq, value = option.partition("=")
            if key == "ret_steps" and not eq:
                fields["ret_steps"] = True
            elif key == "K" and eq:
                fields["max_skips"] = _number(value, "K", int)
            elif key == "retention" and eq:
                fields["retention"] = _number(value, "retention", float)
            elif key == "threshold" and eq:
                fields["threshold"] = _number(value, "threshold", float)
            else:
                raise ValueError(f"--cache option {option!r} is not one of: a threshold, threshold=X, ret_steps "
                                 f"(teacache), K=N and retention=X (magcache)")
        return cls(policy.strip(), calibration=calibration, **fields)


def _number(text: str, name: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"cache {name} must be {'an int' if kind is int else 'a number'}; got {text!r}") from None
