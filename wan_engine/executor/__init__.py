"""The optimized Wan2.1 DiT: the reference's weights and function on fused ops.

    from wan_engine.executor import build_executor
    executor = build_executor(reference_dit, EngineConfig(dtype="bf16"))
    text = executor.prepare_text(context)          # once per request
    velocity = executor.predict(latents, t, text)  # every step
"""
from .model import WanExecutor, build_executor
from .rope_cache import RopeCache, RopeTable, build_rope_table
from .stream import TokenStream
from .text_cache import TextKV
from .weights import BlockWeights, ContextWeights

__all__ = ["BlockWeights", "ContextWeights", "RopeCache", "RopeTable", "TextKV", "TokenStream", "WanExecutor",
           "build_executor", "build_rope_table"]
