"""onnxruntime runners behind the executor's call signature (the checks' path, on the CPU).

Tensors cross into onnxruntime as numpy arrays: fp32 (and fp16) exports; bf16 needs TensorRT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .runners import ExportedDiT, ExportedVAEDecoder, ExportedVAEEncoder


class OnnxGraph:
    """One exported graph in an onnxruntime session: torch tensors in, torch tensors out (on the
    device of the first input)."""

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("the ONNX engine needs onnxruntime: pip install onnxruntime") from err
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor):
        device = tensors[0].device
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.names, tensors)}
        return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in self.session.run(None, feeds))


class OnnxDiT(ExportedDiT):
    def __init__(self, folder, config, expert=None):
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
