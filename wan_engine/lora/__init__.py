"""LoRAs merged into the DiT's weights: specs, merging / unmerging, and describing a LoRA file.

    from wan_engine.lora import LoraMerger, LoraSpec
    merger = LoraMerger(executor)
    merger.apply([LoraSpec("distill.safetensors", 1.0), LoraSpec("style.safetensors", 0.6)])
    merger.apply([])            # the base weights again, bit for bit
"""
from .describe import describe_lora
from .experts import EXPERTS, ExpertLoraMergers, parse_expert_loras
from .merge import FixedLoras, LoraMerger, LoraReport, lowrank_delta
from .spec import LoraSpec, parse_loras

__all__ = ["EXPERTS", "ExpertLoraMergers", "FixedLoras", "parse_expert_loras", "LoraMerger", "LoraReport", "LoraSpec", "describe_lora", "lowrank_delta", "parse_loras"]
