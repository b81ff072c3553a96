"""`EngineConfig`: how the DiT is run (engine, kernels, attention, CFG batching, compile, dtype).

The model config says *what* is computed; this says *how*. It is frozen and validated on
construction, so everything downstream (ops dispatch, executor, runner) can trust it. Later
features (parallel degrees, step-cache policy, CUDA graphs, offload) add fields here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import BACKENDS as ATTENTION_BACKENDS
from .device import DTYPES

ENGINES = ("executor", "reference")
OPS_BACKENDS = ("auto", "triton", "torch")
ENGINE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class EngineConfig:
    """How the DiT runs.

    engine: "executor" (fused kernels, precomputed text K/V) or "reference" (the eager oracle).
    attention: attention backend name (`wan_engine.attention.BACKENDS`); "auto" picks the fastest.
    ops: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch" for the fused norm ops.
    cfg_batch: run the conditional and unconditional CFG branches as one batch-2 forward.
    compile: torch.compile the DiT block function.
    dtype: GEMM/attention dtype (fp32, bf16 or fp16; a torch.dtype or a name such as "bf16");
      None takes the dtype of the model the engine is built from.
    """

    engine: str = "executor"
    attention: str = "auto"
    ops: str = "auto"
    cfg_batch: bool = True
    compile: bool = False
    dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}; got {self.attention!r}")
        if self.ops not in OPS_BACKENDS:
            raise ValueError(f"ops must be one of {', '.join(OPS_BACKENDS)}; got {self.ops!r}")
        for name in ("cfg_batch", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        # Normalise a dtype name once so that equal configs compare (and hash) equal.
        object.__setattr__(self, "dtype", _parse_dtype(self.dtype))

    def resolved_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The compute dtype to use for a model whose own compute dtype is `model_dtype`."""
        return model_dtype if self.dtype is None else self.dtype


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be None, one of {sorted(set(DTYPES))} or a torch dtype; got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype not in ENGINE_DTYPES:
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16; got {dtype!r}")
    return dtype
