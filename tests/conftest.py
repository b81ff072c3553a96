import pytest

from wan_engine.device import exact_fp32
from wan_engine.env import use_triton_interpreter_without_gpu

# Must happen before any Triton kernel module is imported: without a GPU, Triton can only run
# kernels through its interpreter, and setting this later fails with "0 active drivers".
use_triton_interpreter_without_gpu()


def pytest_configure(config):
    for name, why in [
        ("gpu", "needs a CUDA GPU"),
        ("multigpu", "needs two or more CUDA GPUs"),
        ("trt", "needs TensorRT"),
        ("slow", "slow on CPU; deselect with -m 'not slow'"),
        ("onnx_dit", "runs a DiT export of the layout before timestep features (float64 inside) in onnxruntime, "
                     "which needs onnxruntime >= 1.29 (float64 Cos)"),
        ("onnx_export", "exports to ONNX, which needs torch >= 2.10 (wan_engine.export.versions)"),
    ]:
        config.addinivalue_line("markers", f"{name}: {why}")


def pytest_collection_modifyitems(config, items):
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    skip_multi = pytest.mark.skip(reason=f"needs >= 2 CUDA GPUs, found {n}")
    old_ort = _onnxruntime_too_old_for_dit()
    skip_ort = pytest.mark.skip(reason=f"onnxruntime {old_ort} runs no DiT graph holding float64 (float64 Cos from "
                                       "1.29 on; Python 3.10 has at most 1.23)")
    old_torch = _torch_too_old_for_export()
    skip_export = pytest.mark.skip(reason=f"torch {old_torch} cannot export to ONNX (pytorch/pytorch#172903; "
                                          "export needs torch >= 2.10, refused by name below that)")
    for item in items:
        if "onnx_dit" in item.keywords and old_ort:
            item.add_marker(skip_ort)
        if "onnx_export" in item.keywords and old_torch:
            item.add_marker(skip_export)
        if "gpu" in item.keywords and n == 0:
            item.add_marker(skip_gpu)
        if "multigpu" in item.keywords and n < 2:
            item.add_marker(skip_multi)


def _onnxruntime_too_old_for_dit() -> str | None:
    """The installed onnxruntime's version when it cannot run DiT graphs holding float64, else None."""
    try:
        import onnxruntime
    except ImportError:
        return None  # the tests that need it fail on the import, as before
    from wan_engine.export.onnx_runtime import check_onnxruntime_for_dit

    try:
        check_onnxruntime_for_dit(onnxruntime.__version__, "")
    except ValueError:
        return onnxruntime.__version__
    return None


def _torch_too_old_for_export() -> str | None:
    """The installed torch's version when its ONNX exporter cannot trace our graphs, else None."""
    import torch

    from wan_engine.export.versions import check_torch_for_export

    try:
        check_torch_for_export(torch.__version__)
    except ValueError:
        return torch.__version__
    return None


@pytest.fixture(autouse=True)
def _no_tf32():
    """Every test compares against fp32 oracles; on a GPU, cuDNN would run their convolutions in
    TF32 by default (~1e-3), so TF32 is off for every test and restored afterwards."""
    with exact_fp32():
        yield


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The tiny preset's DiT and VAE decoder exported to ONNX once per run,
    for batch 1-2, 5-9 frames, 32-64 pixels a side: (folder holding dit/ and vae-decoder/, shapes)."""
    import wan_engine
    from wan_engine.export.manifest import ShapeRange
    from wan_engine.export.onnx_export import export_onnx

    shapes = ShapeRange(batch=(1, 2), frames=(5, 9), height=(32, 64), width=(32, 64))
    root = tmp_path_factory.mktemp("tiny_export")
    pipe = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu")
    export_onnx(pipe, "dit", root / "dit", shapes)
    export_onnx(pipe, "vae-decoder", root / "vae-decoder", shapes)
    return root, shapes
