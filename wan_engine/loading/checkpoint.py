"""Reading weight files safely and placing them into modules.

Only safetensors and `torch.load(weights_only=True)` are used: nothing is ever unpickled. Every
failure names the file or key at fault, so a user with a half-downloaded checkpoint learns which
file to fetch again.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file (memory-mapped by safetensors, copied lazily per tensor)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict saved with torch.save, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for bad archives
        raise CheckpointError(f"{path}: corrupt, truncated or unsafe .pth file ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return sd


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        return read_pth(path)
    raise CheckpointError(f"{path}: unsupported weight file type {path.suffix!r} (.safetensors or .pth)")


def read_sharded(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    """Tensors of `stem*.safetensors` in `directory`, following `stem.safetensors.index.json` if present.

    With an index, every shard it names must exist and hold exactly the keys the index assigns it.
    """
    directory = Path(directory)
    index = directory / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid shard index ({e})") from e
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: not a valid shard index (weight_map must map tensor names to file names)")
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
        for shard, keys in shards.items():
            if not (directory / shard).is_file():
                raise CheckpointError(
                    f"missing shard {directory / shard} (listed in {index.name} for {len(keys)} tensors, "
                    f"e.g. {keys[0]!r})"
                )
        sd: dict[str, torch.Tensor] = {}
        for shard, keys in sorted(shards.items()):
            part = read_safetensors(directory / shard)
            absent = sorted(set(keys) - set(part))
            if absent:
                raise CheckpointError(f"{directory / shard}: missing tensors listed in {index.name}: {absent[:5]}")
            sd.update(part)
        return sd
    files = sorted(directory.glob(f"{stem}*.safetensors"))
    if not files:
        raise CheckpointError(f"no {stem}*.safetensors files in {directory}")
    sd = {}
    for f in files:
        sd.update(read_safetensors(f))
    return sd


def read_safetensors_shapes(directory: Path, stem: str) -> dict:
    """Meta tensors shaped as in the safetensors headers (no tensor data is read).

    safetensors validates each header, including that the file is long enough for the tensors
    it lists, so an empty, corrupt or truncated file is reported by name here as at load time.
    """
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob(f"{stem}*.safetensors"))
    if not files:
        raise CheckpointError(f"no {stem}*.safetensors files in {directory}")
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                shapes.update({k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()})
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: corrupt or truncated safetensors file ({e})") from e
    return shapes


def _summarize(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_into(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None,
    device: torch.device | str = "cpu",
    source: str = "checkpoint",
    consume: bool = False,
) -> nn.Module:
    """Assign `state_dict` into `module` (typically built on the meta device), cast and moved.

    Missing, unexpected and wrong-shape tensors are reported by name before anything is assigned.
    A module may declare tensors that must stay fp32 whatever `dtype` is with a method
    `is_fp32_parameter(name) -> bool` (the reference DiT does: the official fp32 regions); those
    keep full precision, converted to fp32 if stored otherwise. This layer knows no model: the
    module states its own policy. With `consume`, entries are popped from `state_dict` as they
    are converted, so a checkpoint read into memory is never held twice (a 14B DiT is 28 GB in bf16).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys: {_summarize(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summarize(unexpected)}")
    for key in sorted(set(expected) & set(state_dict)):
        if tuple(expected[key].shape) != tuple(state_dict[key].shape):
            problems.append(
                f"shape mismatch for {key!r}: model expects {tuple(expected[key].shape)}, "
                f"checkpoint has {tuple(state_dict[key].shape)}"
            )
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    keeps_fp32 = getattr(module, "is_fp32_parameter", None)
    converted = {}
    for key in list(state_dict):
        tensor = state_dict.pop(key) if consume else state_dict[key]
        target = expected[key].dtype if not tensor.is_floating_point() else dtype or tensor.dtype
        if tensor.is_floating_point() and dtype is not None and keeps_fp32 is not None and keeps_fp32(key):
            target = torch.float32
        moved = tensor.to(device=device, dtype=target)
        if moved.data_ptr() % 64:
            # Tensors sliced out of a file buffer can sit at any 8-byte offset; CPU GEMMs then take
            # other SIMD paths and round differently. A copy at the allocator's 64-byte alignment
            # makes results bitwise independent of the file layout. Aligned (e.g. mmapped .pth)
            # tensors are kept as they are.
            moved = moved.clone(memory_format=torch.contiguous_format)
        converted[key] = moved
        del tensor
    module.load_state_dict(converted, strict=True, assign=True)
    return module.to(device)
