"""Export of the DiT and the VAE chunks (ONNX; TensorRT engines built from it) and the runners that
stand in for the executor (`--engine onnx:DIR`, `--engine trt:DIR`)."""
from __future__ import annotations

from pathlib import Path

from .manifest import COMPONENTS, Manifest, ShapeRange


def runner_for(kind: str, component: str, folder: Path, *, dit_config=None, vae=None):
    """The runner of an export folder: onnxruntime (`onnx`) or TensorRT (`trt`)."""
    if kind == "onnx":
        from .onnx_runtime import OnnxDiT, OnnxVAEDecoder

        return OnnxDiT(folder, dit_config) if component == "dit" else OnnxVAEDecoder(folder, vae)
    from .tensorrt import TrtDiT, TrtVAEDecoder

    return TrtDiT(folder, dit_config) if component == "dit" else TrtVAEDecoder(folder, vae)


__all__ = ["COMPONENTS", "Manifest", "ShapeRange", "runner_for"]
