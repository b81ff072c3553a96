"""onnxruntime runners behind the executor's call signature (the checks' path, on the CPU).

Tensors cross into onnxruntime as numpy arrays: fp32 (and fp16) exports; bf16 needs TensorRT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .manifest import Manifest
from .runners import ExportedDiT, ExportedVAEDecoder, ExportedVAEEncoder
from .versions import release


# A DiT export made before the step graphs took the timesteps' sinusoid features computes the
# official timestep embedding in float64 inside its graphs. onnxruntime's CPU provider has a float64
# Cos kernel from 1.29 on (microsoft/onnxruntime#28975; checked here: 1.28 fails, 1.29 runs); before
# it, creating the session fails with NOT_IMPLEMENTED for Cos. Newer exports run on any release.
DIT_MIN_ONNXRUNTIME = (1, 29)


def check_onnxruntime_for_dit(version: str, folder, timestep_features: bool = False) -> None:
    """Refuse by name an onnxruntime too old for an export whose graphs hold float64."""
    if not timestep_features and release(version) < DIT_MIN_ONNXRUNTIME:
        need = ".".join(map(str, DIT_MIN_ONNXRUNTIME))
        raise ValueError(f"onnxruntime {version} cannot run the DiT export {folder}: its graphs compute the "
                         f"official timestep embedding in float64 (an export from before the graphs took its "
                         f"features), and onnxruntime's CPU provider has float64 Cos from {need} on: export it "
                         f"again, or pip install 'onnxruntime>={need}' (Python 3.11+)")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("the ONNX engine needs onnxruntime: pip install onnxruntime") from err
    return onnxruntime


class OnnxGraph:
    """One exported graph in an onnxruntime session: torch tensors in, torch tensors out (on the
    device of the first input)."""

    def __init__(self, path: Path):
        self.session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor):
        device = tensors[0].device
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.names, tensors)}
        return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in self.session.run(None, feeds))


class OnnxDiT(ExportedDiT):
    def __init__(self, folder, config, expert=None):
        manifest = Manifest.load(folder)  # read (and refused if it does not read) before any session
        check_onnxruntime_for_dit(_onnxruntime().__version__, folder, manifest.timestep_features)
        super().__init__(folder, config, "onnx", OnnxGraph, expert)
        if self.manifest.dtype == "bf16":
            raise ValueError(f"export {self.folder} is bf16, which onnxruntime cannot feed from numpy: use "
                             f"--engine trt:DIR, or export in fp32/fp16")

    def describe(self) -> str:
        return f"onnxruntime ({self.folder})"


class OnnxVAEDecoder(ExportedVAEDecoder):
    def __init__(self, folder, vae):
        super().__init__(folder, vae, "onnx", OnnxGraph)


class OnnxVAEEncoder(ExportedVAEEncoder):
    def __init__(self, folder, vae):
        super().__init__(folder, vae, "onnx", OnnxGraph)
