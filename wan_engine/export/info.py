"""`wan-engine info DIR` for an export: what each component holds and what a run can do with it.

Read from the manifests only (no graph is loaded): the model, format, dtype and shape ranges, the
graphs with their size on disk, and which step caches the DiT export runs.
"""
from __future__ import annotations

from pathlib import Path

from .manifest import COMPONENTS, EXPERT_FOLDERS, FILE, Manifest
from .modules import FIRST_BLOCK_KINDS

_ABSENT = {"dit": "absent: --engine onnx:DIR/trt:DIR needs one",
           "vae-decoder": "absent: the decode runs as the static chunk loop in torch",
           "vae-encoder": "absent: an i2v/flf2v conditioning encode runs in torch"}


def _exports_in(folder: Path) -> list[Path]:
    """The export folders `folder` stands for: itself, or a two-expert DiT's expert folders."""
    if (folder / FILE).is_file():
        return [folder]
    return [folder / name for name in EXPERT_FOLDERS if (folder / name / FILE).is_file()]


def is_export_dir(path: str | Path) -> bool:
    """A component's export folder (a two-expert DiT's: the folder of its experts' exports), or a
    folder that holds component folders."""
    path = Path(path).expanduser()
    return bool(_exports_in(path)) or any(_exports_in(path / c) for c in COMPONENTS)


def _span(lo_hi: tuple[int, int]) -> str:
    lo, hi = lo_hi
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


def _caches(manifest: Manifest) -> str:
    roles = set(manifest.files)
    split = set(FIRST_BLOCK_KINDS) <= roles
    runs = ["uncached"] if split or "full" in roles else []
    missing = []
    if "reuse" in roles and (split or "full_residual" in roles):
        # TeaCache's polynomial belongs to one DiT: refused for two experts, exported or not.
        if manifest.expert is None:
            if "time_embedding" in roles:
                runs.append("teacache")
            else:
                missing.append("not teacache (an export from before the time-embedding graph: export it again)")
        runs.append("magcache")
    if split:
        runs.append("fbcache")
    else:
        missing.append("not fbcache (an export from before the split step: export it again)")
    return ", ".join(runs + missing)


def _describe(folder: Path, manifest: Manifest) -> list[str]:
    s = manifest.shapes
    what = manifest.component if manifest.expert is None else f"{manifest.component} ({manifest.expert} expert)"
    lines = [f"{what}: {manifest.format}, {manifest.dtype}, model {manifest.model}; batch "
             f"{_span(s.batch)}, frames {_span(s.frames)}, height {_span(s.height)}, width {_span(s.width)}",
             f"  {len(manifest.files)} graph(s), {_megabytes(folder):.1f} MB: {', '.join(manifest.files)}"]
    if manifest.component == "dit":
        frame0 = "; frame 0 at its own timestep (TI2V image-to-video)" if manifest.frame0_timestep else ""
        lines.append(f"  model type {manifest.config.get('model_type', 't2v')}; step caches: {_caches(manifest)}{frame0}")
        merged = ", ".join(f"{r['file']} x{r['strength']:g} (sha256 {r['sha256'][:12]})" for r in manifest.loras)
        lines.append(f"  LoRAs merged: {merged or 'none'}")
        weights = manifest.weights.rpartition(":")[2][:12] if manifest.weights else None
        lines.append(f"  weights: fingerprint {weights}" if weights else
                     "  weights: no fingerprint (seeded random weights, or an export older than fingerprints)")
    made = ", ".join(f"{k} {v}" for k, v in manifest.versions.items() if v)
    lines.append(f"  exported with opset {manifest.opset}" + (f", {made}" if made else ""))
    return lines


def describe_export(path: str | Path) -> str:
    """The export at `path` (one component's folder, or a folder of them), as `info` prints it.
    A manifest that does not read is named with the reason."""
    path = Path(path).expanduser()
    lines = [f"export {path}"]
    exports = _exports_in(path)
    if exports:
        for folder in exports:
            lines += _describe(folder, Manifest.load(folder))
        return "\n".join(lines)
    for component in COMPONENTS:
        exports = _exports_in(path / component)
        for folder in exports:
            manifest = Manifest.load(folder)
            if manifest.component != component:
                raise ValueError(f"{folder} holds a {manifest.component} export, not {component}")
            lines += _describe(folder, manifest)
        if not exports:
            lines.append(f"{component}: {_ABSENT[component]}")
    return "\n".join(lines)
