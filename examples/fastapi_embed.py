"""Embed the Engine in a FastAPI app of your own: one model loaded at start-up, one route.

    uvicorn examples.fastapi_embed:app --host 127.0.0.1 --port 8080
    curl -s -X POST 127.0.0.1:8080/clips -H 'content-type: application/json' \
        -d '{"prompt": "a red kite", "num_inference_steps": 4}' -o kite.mp4

The Engine queues and runs one job at a time; the route waits for its job in a worker thread, so
the event loop stays free. `build_app("tiny")` is what the test uses.
"""
from __future__ import annotations

import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from wan_engine import Engine, GenerationRequest, save_video
from wan_engine.engine import COMPLETED, QueueFull, RequestError


class Clip(BaseModel):
    prompt: str = Field(min_length=1, max_length=2000)
    seed: int | None = None
    num_inference_steps: int | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None


def build_app(model: str = "tiny", **pipeline_options) -> FastAPI:
    engines: dict[str, Engine] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engines["main"] = Engine.from_pretrained(model, max_queue=8, warmup=True, **pipeline_options)
        yield
        engines.pop("main").close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/clips")
    async def make_clip(clip: Clip):
        size = (clip.width, clip.height) if clip.width and clip.height else None
        request = GenerationRequest(clip.prompt, seed=clip.seed, num_inference_steps=clip.num_inference_steps,
                                    num_frames=clip.num_frames, size=size)
        try:
            job = engines["main"].submit(request)
        except RequestError as e:
            raise HTTPException(422, {"field": e.field, "message": e.message}) from None
        except QueueFull as e:
            raise HTTPException(429, str(e)) from None
        await run_in_threadpool(job.wait)
        if job.status != COMPLETED:
            raise HTTPException(500, f"job {job.status}: {job.snapshot().error}")
        with tempfile.TemporaryDirectory() as tmp:
            mp4 = save_video(job.result.frames, Path(tmp) / "clip.mp4").read_bytes()
        return Response(mp4, media_type="video/mp4", headers={"x-seed": str(job.result.seed)})

    return app


app = build_app()  # cheap: the model loads in the lifespan, when a server starts the app
