"""Merging LoRAs into a DiT's weights in place, and taking them out again exactly.

The merged weight of an official tensor W is, for each LoRA in order and each of its parts,

    W <- W + strength * (alpha / rank) * (up @ down)     (low rank; alpha absent: alpha / rank = 1)
    W <- W + strength * diff                              (full delta, weights and biases)

computed in fp32 (`W.float() + delta`) and rounded once per LoRA to W's stored dtype, so the
fp32 regions stay fp32 and a bf16 GEMM weight is rounded as a bf16 merge would round it. The
model's weights are addressed by official name through `official_slots()` (the executor: views
into its fused QKV / KV rows) or its parameters (the reference `WanDiT`).

Unmerging restores the original tensors, copied to the CPU before their first merge, so it is
bit for bit whatever the dtype (a subtraction would not be). The copies cost host memory equal to
the touched weights (the whole DiT for a LoRA on every linear layer) until `apply([])`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..loading.errors import CheckpointError
from ..loading.lora_format import Diff, LoraFile, LowRank, parse_lora
from .spec import LoraSpec, parse_loras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraReport:
    """What one merged LoRA did: its format, ranks, how many official tensors it changed, and the
    file's keys that matched nothing in this model."""

    spec: LoraSpec
    format: str
    ranks: tuple[int, ...]
    targets: int
    unmatched: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        ranks = ",".join(map(str, self.ranks)) or "-"
        text = f"{self.spec.path} x{self.spec.strength:g}: {self.format}, rank {ranks}, {self.targets} tensors"
        if self.unmatched:
            shown = ", ".join(self.unmatched[:5]) + (f" and {len(self.unmatched) - 5} more" if len(self.unmatched) > 5 else "")
            text += f"; {len(self.unmatched)} keys matched nothing: {shown}"
        return text


def lowrank_delta(part: LowRank, strength: float, shape: tuple[int, ...], device) -> torch.Tensor:
    """strength * (alpha / rank) * (up @ down) in fp32, shaped `shape` (conv kernels flattened)."""
    scale = strength * (1.0 if part.alpha is None else part.alpha / part.rank)
    up = part.up.to(device=device, dtype=torch.float32).flatten(1)
    down = part.down.to(device=device, dtype=torch.float32).flatten(1)
    return (scale * (up @ down)).reshape(shape)


def _slots(model) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    slots = getattr(model, "official_slots", None)
    if slots is not None:
        return slots()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"a {type(model).__name__} holds no weights to merge LoRAs into (the executor and the "
                         f"reference do)")
    return {name: (p.data, tuple(p.shape)) for name, p in model.named_parameters()}


def _part_shape(part) -> tuple[int, ...]:
    if isinstance(part, Diff):
        return tuple(part.delta.shape)
    return (part.up.shape[0], part.down.shape[1], *part.down.shape[2:])


def _check(lora: LoraFile, slots: dict) -> None:
    """Shapes against the model; every key is named on failure. Nothing is merged before this."""
    for name, parts in lora.targets.items():
        if name not in slots:
            continue
        shape = slots[name][1]
        for part in parts:
            got = _part_shape(part)
            # A 1x1 conv kernel's trailing ones may be absent in the file (Linear-style LoRAs).
            if got != shape and not (isinstance(part, LowRank) and got + (1,) * (len(shape) - len(got)) == shape):
                keys = part.keys if isinstance(part, LowRank) else (part.key,)
                raise CheckpointError(f"{lora.path}: {keys[0]!r} gives a delta of shape {got} for {name!r}, whose "
                                      f"shape in this model is {shape} (a LoRA for another model size?)")


@dataclass(frozen=True)
class PreparedLoras:
    """LoRA files read and checked against one model, not merged yet."""

    specs: tuple[LoraSpec, ...]
    files: tuple[LoraFile, ...]
    slots: dict


class LoraMerger:
    """The LoRAs merged into one model, which it changes in place.

    `apply(loras)` replaces whatever is merged with `loras` (in order; [] restores the base);
    the base weights are never reloaded. A model whose weights were quantized (fp8) afterwards
    cannot change its LoRAs: merge first, then quantize.
    """

    def __init__(self, model):
        self.model = model
        self._originals: dict[str, torch.Tensor] = {}
        self.reports: tuple[LoraReport, ...] = ()

    def apply(self, loras) -> tuple[LoraReport, ...]:
        return self.commit(self.prepare(loras))

    def prepare(self, loras) -> "PreparedLoras":
        """Read `loras` and check them against the model, changing nothing (`commit` merges them)."""
        specs = parse_loras(loras)
        if getattr(self.model, "quant", None) is not None:
            raise ValueError(f"the DiT's weights are quantized ({self.model.quant}); LoRAs merge before quantization, "
                             f"so load the model again with loras=[...]")
        slots = _slots(self.model)
        names = set(slots)
        files = [parse_lora(spec.path, names) for spec in specs]
        for spec, lora in zip(specs, files):
            _check(lora, slots)
            if not any(name in slots for name in lora.targets):
                shown = ", ".join(repr(k) for k in lora.unmatched[:5])
                raise CheckpointError(f"{spec.path}: none of its {lora.num_keys} keys matches a parameter of this "
                                      f"Wan2.1 DiT (a LoRA for another model?); e.g. {shown}")
        return PreparedLoras(specs, tuple(files), slots)

    def commit(self, prepared: "PreparedLoras") -> tuple[LoraReport, ...]:
        """Replace the merged LoRAs with the prepared ones."""
        specs, files, slots = prepared.specs, prepared.files, prepared.slots
        self._restore(slots)
        reports = []
        for spec, lora in zip(specs, files):
            merged = self._merge(lora, spec.strength, slots)
            unmatched = tuple(sorted(set(lora.unmatched) | {k for name, parts in lora.targets.items()
                                                            if name not in slots for k in _keys(parts)}))
            report = LoraReport(spec, lora.format, tuple(lora.ranks), merged, unmatched)
            if unmatched:
                log.warning("LoRA %s: %d keys matched nothing: %s", spec.path, len(unmatched), ", ".join(unmatched))
            reports.append(report)
        self.reports = tuple(reports)
        return self.reports

    def clear(self) -> None:
        """Restore the base weights (bit for bit)."""
        self.apply([])

    def _restore(self, slots: dict) -> None:
        for name, original in self._originals.items():
            slots[name][0].copy_(original)
        self._originals.clear()

    def _merge(self, lora: LoraFile, strength: float, slots: dict) -> int:
        merged = 0
        for name, parts in lora.targets.items():
            if name not in slots:
                continue
            view, _ = slots[name]
            if name not in self._originals:
                self._originals[name] = view.detach().to("cpu", copy=True)
            total = view.float()
            for part in parts:
                if isinstance(part, LowRank):
                    delta = lowrank_delta(part, strength, view.shape, view.device)
                else:
                    delta = (strength * part.delta.to(device=view.device, dtype=torch.float32)).reshape(view.shape)
                total = total + delta
            view.copy_(total)
            merged += 1
        return merged


def _keys(parts) -> list[str]:
    return [k for p in parts for k in (p.keys if isinstance(p, LowRank) else (p.key,))]


class FixedLoras:
    """`LoraMerger`'s interface for a DiT whose weights cannot change here (an exported engine's
    are in its graphs): no LoRAs merged in this process; `apply` refuses, giving `reason`."""

    reports: tuple[LoraReport, ...] = ()

    def __init__(self, reason: str):
        self.reason = reason

    def apply(self, loras) -> tuple[LoraReport, ...]:
        raise ValueError(f"set_loras: {self.reason}")

    def clear(self) -> None:
        self.apply([])
