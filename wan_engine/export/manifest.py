"""The export directory's manifest: what was exported, for which model, shapes and dtype.

`manifest.json` beside the .onnx / .plan files. A runner reads it first and refuses, by name,
a directory that does not fit the model or the request (another model, shapes outside the
exported ranges, another dtype) before any work.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "wan_engine.export/1"
FILE = "manifest.json"
COMPONENTS = ("dit", "vae-decoder", "vae-encoder")
FORMATS = ("onnx", "trt")
DTYPES = ("fp32", "fp16", "bf16")
# A two-expert model's DiT exports: one complete export per expert, in these subfolders.
EXPERT_FOLDERS = ("high_noise", "low_noise")


@dataclass(frozen=True)
class ShapeRange:
    """Batch 1-2, frames 4n+1, height and width in pixels (multiples of 16), each (min, max)."""

    batch: tuple[int, int] = (1, 2)
    frames: tuple[int, int] = (5, 81)
    height: tuple[int, int] = (480, 720)
    width: tuple[int, int] = (480, 1280)

    def __post_init__(self):
        for name in ("batch", "frames", "height", "width"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ValueError(f"export {name} range must be two ints 1 <= min <= max; got {(lo, hi)}")
        if self.batch[1] > 2:
            raise ValueError(f"export batch must be within 1-2 (the CFG pair); got {self.batch}")
        for v in self.frames:
            if (v - 1) % 4:
                raise ValueError(f"export frames must be 4n+1; got {self.frames}")
        for name in ("height", "width"):
            for v in getattr(self, name):
                if v % 16:
                    raise ValueError(f"export {name} must be multiples of 16 pixels; got {getattr(self, name)}")

    def overlap(self, other: "ShapeRange") -> "ShapeRange":
        """The shapes both ranges hold (a pipeline's exported components must all run a request)."""
        spans = {}
        for name in ("batch", "frames", "height", "width"):
            (lo, hi), (other_lo, other_hi) = getattr(self, name), getattr(other, name)
            spans[name] = (max(lo, other_lo), min(hi, other_hi))
            if spans[name][0] > spans[name][1]:
                raise ValueError(f"the exported components hold no common {name}: [{lo}, {hi}] and "
                                 f"[{other_lo}, {other_hi}]; export them with overlapping ranges")
        return ShapeRange(**spans)

    def refusal(self, num_frames: int, width: int | None = None, height: int | None = None):
        """(request field, message) for a video these graphs cannot run, else None."""
        checks = [("num_frames", "frames", num_frames)]
        if width is not None:
            checks += [("size", "width", width), ("size", "height", height)]
        for field, name, value in checks:
            lo, hi = getattr(self, name)
            if not lo <= value <= hi:
                return field, (f"{field}: {name} {value} is outside the exported engine's range [{lo}, {hi}] "
                               f"(frames {self.frames[0]}-{self.frames[1]}, width {self.width[0]}-{self.width[1]}, "
                               f"height {self.height[0]}-{self.height[1]} pixels)")
        return None

    def check(self, batch: int, frames: int, height: int, width: int, where: str) -> None:
        for name, value in (("batch", batch), ("frames", frames), ("height", height), ("width", width)):
            lo, hi = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{where}: {name} {value} is outside the exported range [{lo}, {hi}]; export "
                                 f"again with a range that holds it")


@dataclass(frozen=True)
class Manifest:
    model: str
    component: str
    format: str
    dtype: str
    shapes: ShapeRange
    config: dict  # the DiT or VAE config it was exported from
    files: dict  # role -> file name
    opset: int | None = None
    versions: dict = field(default_factory=dict)
    expert: str | None = None  # a two-expert model's DiT: "high_noise" or "low_noise"
    loras: tuple = ()  # the LoRAs merged into the exported weights: {"file", "strength", "sha256"} each
    frame0_timestep: bool = False  # TI2V: the step graphs take t [B, 2] and frame 0's rows (image-to-video)
    # The step graphs take the timesteps' fp32 sinusoid features [B, k, freq_dim], computed on the host
    # in float64 (no graph holds float64); False: an export made before, whose graphs take t and
    # compute the sinusoid in float64 themselves.
    timestep_features: bool = False
    # The fingerprint of the weights it was made from (loading/fingerprint.py): a DiT's checkpoint folder
    # (before any LoRA; None: a preset's seeded random weights), a VAE's loaded state. None as well in an
    # export made before fingerprints.
    weights: str | None = None

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["format_version"] = FORMAT
        return data

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        partial = path.with_name(f".{FILE}.partial")
        partial.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(partial, path)  # written last: a directory without it is an unfinished export
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder).expanduser()
        path = folder / FILE
        if not path.is_file():
            raise ValueError(f"{folder} is not an export directory (no {FILE}; run `wan-engine export` first, or the "
                             f"export did not finish)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if data.pop("format_version", None) != FORMAT:
            raise ValueError(f"{path}: not a wan_engine export manifest ({FORMAT})")
        data["shapes"] = ShapeRange(**{k: tuple(v) for k, v in data["shapes"].items()})
        data["loras"] = tuple(data.get("loras", ()))
        manifest = cls(**data)
        for role, name in manifest.files.items():
            if not (folder / name).is_file():
                raise ValueError(f"{folder}: the manifest names {role} file {name}, which is missing")
        return manifest

    def check(self, *, component: str, config: dict, dtype: str | None = None, where: str = "",
              expert: str | None = None) -> None:
        """Refuse a directory exported for something else, naming what differs. `expert`: the
        two-expert model's DiT this export must be (None: a one-DiT model's)."""
        where = where or f"export ({self.model})"
        config = json.loads(json.dumps(config))  # tuples read back from JSON as lists
        if self.component != component:
            raise ValueError(f"{where} holds a {self.component} export, not {component}")
        if self.expert != expert:
            held = "one DiT's export" if self.expert is None else f"the {self.expert} expert of a two-expert model"
            wanted = "a one-DiT model's" if expert is None else f"the {expert} expert's"
            raise ValueError(f"{where} holds {held} ({self.model}); the run needs {wanted}")
        if self.config != config:
            diff = sorted(k for k in set(config) | set(self.config) if config.get(k) != self.config.get(k))
            raise ValueError(f"{where} was exported from another model: {', '.join(diff)} differ "
                             f"(exported {self.model})")
        if dtype is not None and dtype != self.dtype:
            raise ValueError(f"{where} was exported in {self.dtype}, the run asks for {dtype}")

    def check_weights(self, weights: str | None, source: str, where: str = "") -> str | None:
        """Refuse an export made from other weights than the run's (`weights`: the fingerprint of
        `source`, the run's DiT folder or VAE; None: a DiT's seeded random weights). Returns a warning
        when the export records none (random weights, or an export older than fingerprints)."""
        where = where or f"export ({self.model})"
        if self.weights == weights:
            return None
        if self.weights is None:
            return (f"{where} records no weight fingerprint (exported from seeded random weights, or before exports "
                    f"recorded one): its weights are not checked against {source}'s")
        if weights is None:
            raise ValueError(f"{where} was exported from checkpoint weights ({self.model}); this run's DiT has a "
                             f"preset's seeded random weights")
        raise ValueError(f"{where} was exported from other weights than {source}'s (fingerprint "
                         f"{self.weights.rpartition(':')[2][:12]} there, {weights.rpartition(':')[2][:12]} here): "
                         f"another checkpoint of this architecture, e.g. a fine-tune. Export this model, or run the "
                         f"one it was exported from ({self.model})")
