"""Which weights a DiT folder (or a loaded VAE) holds, as a short fingerprint of a sample of its tensors.

An exported DiT carries its weights in its graphs, so a run of an export reads no DiT weights, and
the architecture check cannot tell two checkpoints of one model apart (a fine-tune, a copy with a
LoRA merged in). The export records this fingerprint of the folder it was made from (of the loaded
VAE, for the VAE's exports); a run compares it with the fingerprint of the model it is given.

SHA-256 over every tensor, in official-name order: its name, its shape, and its values, each 1-D
tensor whole and `ROWS` evenly spaced rows (first dim) of every other one, read through safetensors
slices (56 MiB of the 14B DiT's 57 GB in fp32). The values are hashed as bfloat16 (round to nearest even from their
stored dtype), so a checkpoint and its bf16 copy, in either layout, agree. Two checkpoints that
differ only off the sampled rows, or by less than bf16's resolution on them, are not told apart.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
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
    return _digest({name: samples[key] for name, key in stored.items()})


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """The same fingerprint of tensors in memory (a loaded module's state dict, official names):
    the VAE, which a run of an export loads anyway."""
    return _digest({name: (list(t.shape), t.detach().reshape(-1) if t.dim() <= 1 else
                           t.detach()[_rows(t.shape[0])].reshape(-1)) for name, t in state.items()})


def _rows(n: int) -> list[int]:
    return sorted({i * (n - 1) // (ROWS - 1) for i in range(ROWS)})


def _sample(fh, key: str) -> tuple[list[int], torch.Tensor]:
    part = fh.get_slice(key)
    shape = list(part.get_shape())
    if len(shape) <= 1:
        return shape, fh.get_tensor(key).reshape(-1)
    return shape, torch.cat([part[r:r + 1].reshape(-1) for r in _rows(shape[0])])


def _digest(samples: Mapping[str, tuple[list[int], torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(samples):
        shape, values = samples[name]
        digest.update(f"{name}:{list(shape)};".encode())
        digest.update(values.cpu().float().to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return f"{VERSION}:{digest.hexdigest()}"
