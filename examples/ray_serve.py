"""A Ray Serve deployment around `wan_engine.Engine`: one replica per GPU group, each holding
one loaded model and its own queue; Ray routes requests across the replicas.

    python examples/ray_serve.py --model /models/Wan2.1-T2V-1.3B --replicas 8 --gpus-per-replica 1
    curl -s -X POST 127.0.0.1:8000/ -H 'content-type: application/json' \
        -d '{"prompt": "a red kite", "num_inference_steps": 30}' -o kite.mp4

From Python, `serve.run(deployment(...))` returns a handle: `handle.generate.remote(fields)`
gives `{"seed", "timings", "mp4"}` (the MP4's bytes). `--smoke` runs two requests through the
handle on the CPU with the tiny preset and prints a JSON summary (the test does this).
A replica here is one process; a replica spanning several GPUs with sequence parallelism would
run `wan-engine serve` under torchrun inside it instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


@serve.deployment
class WanVideo:
    def __init__(self, model: str, pipeline_options: dict):
        from wan_engine import Engine

        self.engine = Engine.from_pretrained(model, max_queue=8, warmup=True, **pipeline_options)

    def generate(self, fields: dict) -> dict:
        from wan_engine import GenerationRequest, save_video
        from wan_engine.engine import COMPLETED

        size = fields.pop("size", None)
        request = GenerationRequest(**fields, size=None if size is None else tuple(size))
        job = self.engine.submit(request)  # RequestError (a ValueError) names a bad field
        job.wait()
        if job.status != COMPLETED:
            raise RuntimeError(f"job {job.id} {job.status}: {job.snapshot().error}")
        with tempfile.TemporaryDirectory() as tmp:
            mp4 = save_video(job.result.frames, Path(tmp) / "clip.mp4").read_bytes()
        return {"seed": job.result.seed, "timings": job.result.timings, "mp4": mp4}

    async def __call__(self, http: Request):
        from starlette.concurrency import run_in_threadpool

        from wan_engine.engine import QueueFull, RequestError

        try:
            out = await run_in_threadpool(self.generate, await http.json())
        except RequestError as e:
            return JSONResponse({"error": {"message": e.message, "param": e.field}}, 422)
        except QueueFull as e:
            return JSONResponse({"error": {"message": str(e)}}, 429)
        return Response(out["mp4"], media_type="video/mp4", headers={"x-seed": str(out["seed"])})


def deployment(model: str, replicas: int = 1, gpus_per_replica: float = 0, **pipeline_options):
    return WanVideo.options(num_replicas=replicas, ray_actor_options={"num_gpus": gpus_per_replica,
                                                                      "num_cpus": 1}).bind(model, pipeline_options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--gpus-per-replica", type=float, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--port", type=int, default=8000, help="Ray Serve's HTTP port (on 127.0.0.1)")
    parser.add_argument("--smoke", action="store_true", help="two CPU requests through the handle, then exit")
    args = parser.parse_args(argv)
    import ray

    options = {"device": args.device} if args.device else {}
    if args.smoke:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        handle = serve.run(deployment(args.model, args.replicas, 0, device="cpu"), blocking=False)
        fields = [{"prompt": "a red kite", "seed": 5, "size": [32, 32], "num_frames": 5, "num_inference_steps": 2},
                  {"prompt": "a grey sea", "seed": 6, "size": [32, 32], "num_frames": 5, "num_inference_steps": 2}]
        results = [handle.generate.remote(f).result(timeout_s=300) for f in fields]
        out = Path(tempfile.mkdtemp())
        paths = []
        for i, r in enumerate(results):
            paths.append(str(out / f"clip{i}.mp4"))
            Path(paths[-1]).write_bytes(r["mp4"])
        print(json.dumps({"seeds": [r["seed"] for r in results], "paths": paths}))
        serve.shutdown()
        ray.shutdown()
        return 0
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(deployment(args.model, args.replicas, args.gpus_per_replica, **options), blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
