"""TensorRT: engines built from the ONNX exports, and runners behind the executor's signature.

UNVERIFIED: TensorRT cannot be installed on the machines this project is built and tested on (its
wheel fetches its libraries from outside the package registry), so this module is written against
the documented Python API of TensorRT 10 (`Builder`, `OnnxParser`, optimization profiles,
`IExecutionContext.set_input_shape` / `set_tensor_address` / `execute_async_v3`) and its tests are
marked `trt`. Without TensorRT every entry point raises one clear ImportError.

`build_engines(onnx_dir, out_dir)` turns each ONNX file of an export into a serialized engine
(`.plan`) with one optimization profile spanning the manifest's shape ranges; `TrtDiT` /
`TrtVAEDecoder`, `TrtVAEEncoder` run them on torch tensors, on the current CUDA stream.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .manifest import Manifest
from .runners import ExportedDiT, ExportedVAEDecoder, ExportedVAEEncoder

WORKSPACE_BYTES = 8 << 30


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise ImportError("the TensorRT path needs the tensorrt package (pip install 'wan_engine[trt]' on a machine "
                          "with NVIDIA's index reachable); the ONNX path (--engine onnx:DIR) works without it") from err
    return trt


def build_engines(onnx_dir: str | Path, out_dir: str | Path, profiles: dict[str, dict] | None = None,
                  fp16: bool = False, bf16: bool = False) -> Manifest:
    """Build one engine per ONNX file of the export in `onnx_dir`. `profiles`: per role, per input
    name, (min, opt, max) shapes; the caller derives them from the manifest's ranges."""
    trt = _tensorrt()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    manifest = Manifest.load(onnx_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    files = {}
    for role, name in manifest.files.items():
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_dir / name)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT could not parse {onnx_dir / name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if bf16:
            config.set_flag(trt.BuilderFlag.BF16)
        profile = builder.create_optimization_profile()
        for input_name, (lo, opt, hi) in (profiles or {}).get(role, {}).items():
            profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_dir / name}")
        files[role] = Path(name).with_suffix(".plan").name
        (out_dir / files[role]).write_bytes(bytes(engine))
    built = dataclasses.replace(manifest, format="trt", files=files,
                                versions=manifest.versions | {"tensorrt": trt.__version__})
    built.save(out_dir)
    return built


class _Engine:
    """One deserialized engine run on torch tensors (inputs in order, outputs allocated here)."""

    def __init__(self, path: Path):
        trt = _tensorrt()
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def __call__(self, *tensors: torch.Tensor):
        # Held until the call returns: a contiguous copy freed before the enqueue could hand its
        # memory to an output allocated below.
        tensors = [tensor.contiguous() for tensor in tensors]
        for name, tensor in zip(self.inputs, tensors):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = {self.trt.float32: torch.float32, self.trt.float16: torch.float16,
                     self.trt.bfloat16: torch.bfloat16}[self.engine.get_tensor_dtype(name)]
            out = torch.empty(shape, dtype=dtype, device=tensors[0].device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return tuple(outs)


class TrtDiT(ExportedDiT):
    def __init__(self, folder, config, expert=None):
        super().__init__(folder, config, "trt", _Engine, expert)


class TrtVAEDecoder(ExportedVAEDecoder):
    def __init__(self, folder, vae):
        super().__init__(folder, vae, "trt", _Engine)


class TrtVAEEncoder(ExportedVAEEncoder):
    def __init__(self, folder, vae):
        super().__init__(folder, vae, "trt", _Engine)


def profiles_for(onnx_dir: str | Path, manifest: Manifest, model) -> dict[str, dict]:
    """TensorRT optimization profiles {role: {input: (min, opt, max)}} from the ONNX graphs' own
    input shapes, whose dynamic dims carry the exporter's names (batch, tokens, frame0_rows,
    latent_rows, latent_cols, or products of them with a constant), valued from the manifest's ranges; opt is
    the maximum."""
    import onnx

    from .onnx_export import token_range

    s, st = manifest.shapes, model.vae.spatial_stride
    ranges = {"batch": s.batch, "latent_rows": (s.height[0] // st, s.height[1] // st),
              "latent_cols": (s.width[0] // st, s.width[1] // st)}
    if manifest.component == "dit":
        ranges["tokens"] = token_range(s, model.vae, model.dit.patch_size)
        ranges["frame0_rows"] = token_range(s, model.vae, model.dit.patch_size, frames=1)  # TI2V's graphs

    def extent(dim, which: int) -> int:
        if dim.dim_param == "":
            return dim.dim_value
        value = 1
        for factor in dim.dim_param.replace(" ", "").split("*"):
            value *= int(factor) if factor.isdigit() else ranges[factor][which]
        return value

    profiles = {}
    for role, name in manifest.files.items():
        graph = onnx.load(str(Path(onnx_dir) / name), load_external_data=False).graph
        profiles[role] = {}
        for inp in graph.input:
            dims = inp.type.tensor_type.shape.dim
            lo, hi = (tuple(extent(d, i) for d in dims) for i in (0, 1))
            profiles[role][inp.name] = (lo, hi, hi)
    return profiles
