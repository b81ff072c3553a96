"""LoRAs of a two-expert (Wan2.2 A14B) model: each expert takes its own files, as the published
Wan2.2 LoRAs come in pairs (a high-noise and a low-noise file, e.g. LightX2V's 4-step distill).

    loras = {"high_noise": ["high.safetensors"], "low_noise": ["low.safetensors:0.8"]}

Either key may be absent (that expert keeps its base weights). A plain list is refused: which
expert a file belongs to is not something to guess.
"""
from __future__ import annotations

from collections.abc import Mapping

from .merge import LoraMerger, LoraReport
from .spec import LoraSpec, parse_loras

EXPERTS = ("high_noise", "low_noise")


def parse_expert_loras(loras) -> dict[str, tuple[LoraSpec, ...]]:
    """`loras=` of a two-expert model -> {expert: specs} for both experts."""
    if loras is None:
        return {name: () for name in EXPERTS}
    if not isinstance(loras, Mapping):
        if not parse_loras(loras):
            return {name: () for name in EXPERTS}
        raise ValueError("loras: a two-expert model (Wan2.2 A14B) takes its LoRAs per expert: "
                         "loras={'high_noise': [...], 'low_noise': [...]} (CLI: --high-noise-lora, --low-noise-lora)")
    unknown = sorted(set(loras) - set(EXPERTS))
    if unknown:
        raise ValueError(f"loras: unknown expert {unknown[0]!r}; the experts are {', '.join(EXPERTS)}")
    return {name: parse_loras(loras.get(name)) for name in EXPERTS}


class ExpertLoraMergers:
    """The LoRAs merged into each expert: `LoraMerger`'s interface over a {expert: specs} mapping."""

    def __init__(self, high_noise, low_noise):
        self.mergers = {"high_noise": LoraMerger(high_noise), "low_noise": LoraMerger(low_noise)}

    @property
    def reports(self) -> tuple[LoraReport, ...]:
        return tuple(r for merger in self.mergers.values() for r in merger.reports)

    def apply(self, loras) -> tuple[LoraReport, ...]:
        """Replace both experts' LoRAs (an expert left out goes back to its base weights). Every
        file is read and checked against its expert before either expert changes."""
        specs = parse_expert_loras(loras)
        prepared = {name: merger.prepare(specs[name]) for name, merger in self.mergers.items()}
        for name, merger in self.mergers.items():
            merger.commit(prepared[name])
        return self.reports

    def clear(self) -> None:
        self.apply(None)
