"""Export of the DiT and the VAE chunks (ONNX; TensorRT engines built from it) and the runners that
stand in for the executor (`--engine onnx:DIR`, `--engine trt:DIR`)."""
from __future__ import annotations

from pathlib import Path

from .manifest import COMPONENTS, EXPERT_FOLDERS, Manifest, ShapeRange


def runner_for(kind: str, component: str, folder: Path, *, dit_config=None, vae=None, expert=None):
    """The runner of an export folder: onnxruntime (`onnx`) or TensorRT (`trt`); `expert` names
    the DiT of a two-expert model the folder must hold."""
    if kind == "onnx":
        from .onnx_runtime import OnnxDiT as dit, OnnxVAEDecoder as decoder, OnnxVAEEncoder as encoder
    else:
        from .tensorrt import TrtDiT as dit, TrtVAEDecoder as decoder, TrtVAEEncoder as encoder
    if component == "dit":
        return dit(folder, dit_config, expert)
    return (decoder if component == "vae-decoder" else encoder)(folder, vae)


__all__ = ["COMPONENTS", "EXPERT_FOLDERS", "Manifest", "ShapeRange", "runner_for"]
