"""`LoraSpec`: one LoRA file and its strength, as `--lora FILE[:STRENGTH]` and `loras=[...]` give it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file (.safetensors, or a .pth/.pt state dict) and the strength it is merged with
    (any finite number: 1 the file's own scale, 0 no change, negative subtracts it)."""

    path: str
    strength: float = 1.0

    def __post_init__(self):
        if not isinstance(self.path, (str, Path)) or not str(self.path):
            raise ValueError(f"lora path must be a file name, got {self.path!r}")
        object.__setattr__(self, "path", str(self.path))
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise ValueError(f"lora strength must be a finite number, got {strength!r} for {self.path}")
        object.__setattr__(self, "strength", float(strength))

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """`FILE` or `FILE:STRENGTH` (the strength after the last colon, so paths may hold colons)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"--lora must be FILE or FILE:STRENGTH, got {text!r}")
        path, sep, tail = text.rpartition(":")
        if not sep:
            return cls(text)
        try:
            strength = float(tail)
        except ValueError:
            if Path(text).expanduser().exists():
                return cls(text)  # a colon inside the file name
            raise ValueError(f"--lora {text!r}: the strength after ':' must be a finite number, got {tail!r}") from None
        return cls(path, strength)


def parse_loras(loras) -> tuple[LoraSpec, ...]:
    """`loras=` as the API takes it: None, or a list of LoraSpec, "FILE[:STRENGTH]" strings or
    (file, strength) pairs."""
    if loras is None:
        return ()
    if isinstance(loras, (str, LoraSpec)):
        loras = [loras]
    specs = []
    for item in loras:
        if isinstance(item, LoraSpec):
            specs.append(item)
        elif isinstance(item, (str, Path)):
            specs.append(LoraSpec.parse(str(item)))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            specs.append(LoraSpec(*item))
        else:
            raise ValueError(f"loras entries must be LoraSpec, 'FILE[:STRENGTH]' or (file, strength); got {item!r}")
    return tuple(specs)
