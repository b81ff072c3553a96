"""Which DiT weights a folder holds, as a short fingerprint read from a sample of its tensors.

An exported DiT carries its weights in its graphs, so a run of an export reads no DiT weights, and
the architecture check cannot tell two checkpoints of one model apart (a fine-tune, a copy with a
LoRA merged in). The export records this fingerprint of the folder it was made from; a run
compares it with the fingerprint of the model folder it is given.

SHA-256 over every tensor, in official-name order: its name, its shape, and its values, each 1-D
tensor whole and `ROWS` evenly spaced rows (first dim) of every other one, read through safetensors
slices (a few MB of a 14B DiT). The values are hashed as bfloat16 (round to nearest even from their
stored dtype), so a checkpoint and its bf16 copy, in either layout, agree. Two checkpoints that
differ only off the sampled rows, or by less than bf16's resolution on them, are not told apart.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .errors import CheckpointError
from .layout import DIT_STEM
from .state_dicts import official_dit_keys

ROWS = 4
VERSION = "rows4-bf16-sha256"  # how the fingerprint is formed; part of its text, so a new recipe never matches


def dit_fingerprint(dit_dir: str | Path) -> str:
    """The fingerprint of the DiT weights (`diffusion_pytorch_model*.safetensors`) in `dit_dir`."""
    from safetensors import SafetensorError, safe_open

    dit_dir = Path(dit_dir).expanduser()
    files = sorted(dit_dir.glob(f"{DIT_STEM}*.safetensors"))
    if not files:
        raise CheckpointError(f"no {DIT_STEM}*.safetensors files in {dit_dir}")
    samples = {}  # stored key -> (shape, sampled values)
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                samples.update({key: _sample(fh, key) for key in fh.keys()})
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: corrupt or truncated safetensors file ({e})") from e
    stored = official_dit_keys(samples, dit_dir)  # official name -> stored key
    digest = hashlib.sha256()
    for name in sorted(stored):
        shape, values = samples[stored[name]]
        digest.update(f"{name}:{list(shape)};".encode())
        digest.update(values.float().to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return f"{VERSION}:{digest.hexdigest()}"


def _sample(fh, key: str) -> tuple[list[int], torch.Tensor]:
    part = fh.get_slice(key)
    shape = list(part.get_shape())
    if len(shape) <= 1:
        return shape, fh.get_tensor(key).reshape(-1)
    rows = sorted({i * (shape[0] - 1) // (ROWS - 1) for i in range(ROWS)})
    return shape, torch.cat([part[r:r + 1].reshape(-1) for r in rows])
