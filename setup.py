from setuptools import find_packages, setup

# Every package under wan_engine/ is found, so a new subpackage cannot be left out of a wheel (wan_engine.lora
# once was). bench/ stays at the top level (its scripts and results/ are run and read from there) and
# installs as wan_engine.bench.
BENCH = {"wan_engine.bench": "bench", "wan_engine.bench.suites": "bench/suites"}
PACKAGES = find_packages(include=["wan_engine", "wan_engine.*"]) + list(BENCH)

# The first onnxruntime whose CPU provider runs DiT exports made before their graphs took the
# timestep features (float64 inside; wan_engine/export/onnx_runtime.py). Newer exports run on any.
ORT_DIT = "1.29"
# `wan-engine serve` (the HTTP face); its tests need these too.
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "prometheus-client>=0.20"]

setup(
    name="wan_engine",
    version="0.1.0",
    description="Performance-first inference engine for the Wan video diffusion models",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=BENCH,
    # The `shapes` and `shapes-a14b` presets' trained weights (a few MB, official layouts) ship inside the package.
    package_data={"wan_engine.shapes": [
        f"{folder}/{pattern}" for folder in ("weights", "weights_a14b", "weights_a14b/high_noise_model",
                                             "weights_a14b/low_noise_model")
        for pattern in ("*.json", "*.safetensors", "*.pth")] + ["weights/google/umt5-xxl/*",
                                                                "weights_a14b/google/umt5-xxl/*"]},
    install_requires=[
        # The lowest release tested: 2.9.1 passes everything but the ONNX export (which needs 2.10 and
        # says so); 2.6.0 failed (multi-process runs hung under torchrun, triton 3.2 lacks the AOT API).
        "torch>=2.9",
        "numpy",
        "safetensors",
        "transformers>=4.45",
        "tokenizers",
        "ftfy",  # the official prompt cleaning
        "sentencepiece",
        "protobuf",
        "tqdm",
        "imageio",
        "imageio-ffmpeg",
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        # onnxruntime 1.29+ runs the older DiT exports (float64 Cos), which one test checks; Python 3.10
        # has at most 1.23, where that test skips (marker onnx_dit).
        "test": ["pytest", "pytest-timeout", "diffusers>=0.33", "triton>=3.6", "onnx", "onnxscript",
                 f"onnxruntime>={ORT_DIT}; python_version >= '3.11'", "onnxruntime; python_version < '3.11'",
                 # the server's tests: the serve extra, an HTTP client and the official OpenAI client
                 *SERVE, "httpx>=0.27", "openai>=3.0", "ray[serve]>=2.40"],
        "bench": ["pytest-benchmark", "matplotlib", "nvidia-ml-py"],
        "flash": ["flash-attn"],
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        "trt": ["tensorrt", "onnx", "onnxscript", "polygraphy"],
        "serve": SERVE,
        "ray": ["ray[serve]>=2.40"],  # examples/ray_serve.py
    },
    entry_points={"console_scripts": ["wan-engine=wan_engine.cli:main"]},
)
