"""The embedding examples: Engine inside a FastAPI app of one's own, and inside a Ray Serve
deployment (run on the CPU with the tiny preset, in a subprocess). Each video must equal the
one the Engine makes directly for the same request."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_harness import free_port
from wan_engine.engine import Engine, GenerationRequest
from wan_engine.pipelines.t2v import WanPipeline
from wan_engine.video import save_video

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def engine():
    return Engine(WanPipeline.from_pretrained("tiny", device="cpu"))


def _direct_mp4(engine, tmp_path, prompt, seed) -> bytes:
    result = engine.generate(GenerationRequest(prompt, size=(32, 32), num_frames=5, num_inference_steps=2, seed=seed))
    return save_video(result.frames, tmp_path / f"direct-{seed}.mp4").read_bytes()


def test_fastapi_embedding(engine, tmp_path):
    from fastapi.testclient import TestClient

    spec = importlib.util.spec_from_file_location("fastapi_embed", EXAMPLES / "fastapi_embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with TestClient(module.build_app("tiny", device="cpu")) as client:  # the lifespan loads the Engine
        ok = client.post("/clips", json={"prompt": "a red kite", "seed": 3, "num_inference_steps": 2, "num_frames": 5,
                                         "width": 32, "height": 32})
        bad = client.post("/clips", json={"prompt": "x", "num_inference_steps": 0})
    assert ok.status_code == 200 and ok.headers["x-seed"] == "3"
    assert ok.content == _direct_mp4(engine, tmp_path, "a red kite", 3)
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "num_inference_steps"


def test_ray_serve_deployment_on_cpu(engine, tmp_path):
    pytest.importorskip("ray.serve")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "ray_serve.py"), "--smoke", "--port", str(free_port())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"seeds"')))
    assert summary["seeds"] == [5, 6]
    for path, (prompt, seed) in zip(summary["paths"], [("a red kite", 5), ("a grey sea", 6)]):
        assert Path(path).read_bytes() == _direct_mp4(engine, tmp_path, prompt, seed)
