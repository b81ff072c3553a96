"""LoRA files for the Wan2.1 DiT: the formats users have, mapped onto official parameter names.

Formats (detected from the key names; facts from diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`
and the published LightX2V/ComfyUI files):
- diffusers / PEFT: `[transformer.]blocks.0.attn1.to_q.lora_A.weight` / `.lora_B.weight` (diffusers
  module names; no alpha in the file, so the scale is 1 unless a `.alpha` tensor is present);
- kohya (musubi-tuner): `lora_unet_blocks_0_self_attn_q.lora_down.weight` / `.lora_up.weight` / `.alpha`
  (official module names with dots written as underscores);
- ComfyUI / LightX2V: `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `.lora_up.weight`
  (+ `.alpha`), and full deltas `X.diff` (the weight of module X, or parameter X itself such as
  `blocks.0.modulation`) and `X.diff_b` (its bias), as in the published Wan distill LoRAs.

This layer reads and names only; merging into a model is `wan_engine.lora`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import read_weights
from .dit_format import _BLOCK_MODULES, _BLOCK_TENSORS, _TOP_MODULES, _TOP_TENSORS, diffusers_to_official_dit
from .errors import CheckpointError

PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.")
KOHYA_PREFIX = "lora_unet_"
# suffix -> the part of a LoRA entry it is
SUFFIXES = {
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b",
}
_BLOCK_INDEX = re.compile(r"blocks[._](\d+)[._]")


@dataclass
class LowRank:
    """`up @ down` scaled by alpha / rank (alpha None: scale 1), for one official weight."""

    down: torch.Tensor  # [rank, in, *kernel]
    up: torch.Tensor    # [out, rank, *1]
    alpha: float | None
    keys: tuple[str, ...]  # the file's keys it came from (for error messages)

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class Diff:
    """A full delta added to one official tensor (weight or bias)."""

    delta: torch.Tensor
    key: str


@dataclass
class LoraFile:
    """A LoRA file mapped onto official names: `targets[official name] = [LowRank | Diff, ...]`."""

    path: str
    format: str
    targets: dict[str, list] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # the file's keys that name no Wan2.1 parameter
    num_keys: int = 0

    @property
    def ranks(self) -> list[int]:
        return sorted({p.rank for parts in self.targets.values() for p in parts if isinstance(p, LowRank)})


def official_dit_names(num_layers: int, image: bool = True) -> set[str]:
    """Every official parameter name of a Wan2.1 DiT with `num_layers` blocks (i2v/flf2v names too
    with `image`): the names a LoRA may target."""
    leaves = ("weight", "bias")
    top = {f"{o}.{leaf}" for o, _ in _TOP_MODULES for leaf in leaves} | {o for o, _ in _TOP_TENSORS}
    block = {f"{o}.{leaf}" for o, _ in _BLOCK_MODULES for leaf in leaves} | {o for o, _ in _BLOCK_TENSORS}
    if not image:
        top = {n for n in top if not n.startswith("img_emb.")}
        block = {n for n in block if "_img" not in n}
    return top | {f"blocks.{i}.{n}" for i in range(num_layers) for n in block}


class _Resolver:
    """Maps a module (or parameter) name of any supported naming onto official names."""

    def __init__(self, names: set[str]):
        self.names = names
        # kohya writes official names with underscores; every Wan name maps back uniquely.
        self.kohya = {n.rsplit(".", 1)[0].replace(".", "_"): n.rsplit(".", 1)[0] for n in names}
        self.kohya.update({n.replace(".", "_"): n for n in names})

    def __call__(self, module: str, leaf: str | None) -> str | None:
        """The official tensor for `module`'s `leaf` ("weight"/"bias"), or for `module` itself
        (leaf None: a parameter such as `blocks.0.modulation`); None if it names nothing."""
        if module.startswith(KOHYA_PREFIX):
            module = self.kohya.get(module[len(KOHYA_PREFIX):], module)
        candidates = [module] if leaf is None else [f"{module}.{leaf}"]
        if leaf == "weight":
            candidates.append(module)  # `X.diff` on a parameter X (modulation, emb_pos)
        for name in candidates:
            if name in self.names:
                return name
            try:
                official = next(iter(diffusers_to_official_dit({name: None})))
            except (KeyError, StopIteration):  # no rule, or a diffusers key the model ignores
                continue
            if official in self.names:
                return official
        return None


def _split(key: str) -> tuple[str, str] | None:
    for suffix, part in SUFFIXES.items():
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            for prefix in PREFIXES:
                if module.startswith(prefix):
                    module = module[len(prefix):]
                    break
            return module, part
    return None


def detect_format(keys) -> str:
    keys = list(keys)
    kinds = []
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        kinds.append("diffusers/PEFT (lora_A/lora_B)")
    if any(k.startswith(KOHYA_PREFIX) for k in keys):
        kinds.append("kohya (lora_unet_*, lora_down/lora_up, alpha)")
    elif any(".lora_down." in k or ".lora_up." in k for k in keys):
        kinds.append("ComfyUI/LightX2V (official names, lora_down/lora_up, alpha)")
    if any(k.endswith((".diff", ".diff_b")) for k in keys):
        kinds.append("full deltas (diff/diff_b)")
    return " + ".join(kinds) if kinds else "unknown (no LoRA keys)"


def parse_lora(path: str | Path, names: set[str] | None = None) -> LoraFile:
    """Read a LoRA file (.safetensors, or a .pth/.pt state dict read with weights_only=True) and
    map it onto the official names `names` (default: every name of a Wan2.1 DiT with as many
    blocks as the file covers). Keys that name nothing are listed in `unmatched`; a LoRA entry
    missing its down or up half is an error naming the key."""
    sd = read_weights(Path(path).expanduser())
    if names is None:
        blocks = [int(m.group(1)) for m in map(_BLOCK_INDEX.search, sd) if m]
        names = official_dit_names(max(blocks, default=-1) + 1)
    resolve = _Resolver(names)
    lora = LoraFile(str(path), detect_format(sd), num_keys=len(sd))
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in sd.items():
        split = _split(key)
        if split is None:
            lora.unmatched.append(key)
            continue
        module, part = split
        groups.setdefault(module, {})[part] = (key, tensor)
    for module, parts in groups.items():
        _add_group(lora, resolve, module, parts)
    lora.unmatched.sort()
    return lora


def _add_group(lora: LoraFile, resolve: _Resolver, module: str, parts: dict) -> None:
    if "down" in parts or "up" in parts:
        if "down" not in parts or "up" not in parts:
            have, lack = ("down", "up") if "down" in parts else ("up", "down")
            raise CheckpointError(f"{lora.path}: {parts[have][0]!r} has no matching {lack} (lora_B/lora_up "
                                  f"for lora_A/lora_down) tensor")
        target = resolve(module, "weight")
        (down_key, down), (up_key, up) = parts["down"], parts["up"]
        keys = (down_key, up_key) + ((parts["alpha"][0],) if "alpha" in parts else ())
        if target is None:
            lora.unmatched.extend(keys)
        else:
            if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0]:
                raise CheckpointError(f"{lora.path}: {up_key!r} {tuple(up.shape)} and {down_key!r} "
                                      f"{tuple(down.shape)} are not the two halves of one LoRA")
            alpha = float(parts["alpha"][1].float().item()) if "alpha" in parts else None
            lora.targets.setdefault(target, []).append(LowRank(down, up, alpha, keys))
    elif "alpha" in parts:
        lora.unmatched.append(parts["alpha"][0])
    for part, leaf in (("diff", "weight"), ("diff_b", "bias")):
        if part in parts:
            key, tensor = parts[part]
            target = resolve(module, leaf)
            if target is None:
                lora.unmatched.append(key)
            else:
                lora.targets.setdefault(target, []).append(Diff(tensor, key))
