"""The FastAPI app: OpenAI's job-based Videos API over an Engine and a JobStore.

    POST   /v1/videos                 create a job (JSON or multipart/form-data; i2v/flf2v images as the
                                      file fields input_reference and last_reference), returns it at once
    GET    /v1/videos/{id}            the job: status, progress, resolved parameters, seed, timings
    GET    /v1/videos/{id}/content    the MP4 (404 until the job completed)
    GET    /v1/videos                 ?after=&limit=&order=  a page of jobs
    DELETE /v1/videos/{id}            cancels the job if it runs, then deletes it and its MP4
    GET    /health, GET /metrics      liveness and Prometheus text (no key needed)

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, `param` naming
the field at fault. With an API key, every /v1 route needs `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import hmac
import json
import time
import uuid
from dataclasses import dataclass, replace

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..engine import EngineClosed, QueueFull, RequestError
from ..pipelines.image_prompt import IMAGE_OPTIONAL, image_prompt
from .body_limit import BodyLimit
from .job_recorder import JobRecorder
from .job_store import JobStore
from .metrics import ServerMetrics
from .schema import IMAGE_FIELDS, error_body, job_object, new_record, parse_create

TEXT_BODY_BYTES = 64 * 1024  # the default bound of a t2v server's request body
IMAGE_BODY_BYTES = 32 * 1024 * 1024  # an i2v/flf2v server's: room for two large PNGs
POLL_AFTER_MS = "250"  # tells `create_and_poll` how often to ask (its default is 1 s)
MAX_LIST_LIMIT = 100


@dataclass(frozen=True)
class ServerOptions:
    api_key: str | None = None
    max_body_bytes: int = TEXT_BODY_BYTES  # a text request is a few hundred bytes
    cancel_wait_s: float = 60.0  # how long DELETE waits for a running job to stop before deleting


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request",
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no video job with id {job_id!r}", "video_id", "not_found", "not_found_error")


def create_app(engine, store: JobStore, options: ServerOptions = ServerOptions(), lifespan=None) -> FastAPI:
    """The server around an Engine (rank 0 of a launch) and an open JobStore; `lifespan` is
    FastAPI's (the host's start-up and shut-down)."""
    metrics = ServerMetrics(lambda: engine.queue_depth, store.count_by_status)
    app = FastAPI(title="wan_engine", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(error_body(err.message, err.param, err.code, err.kind), err.status, headers=err.headers)

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {options.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", None,
                           "invalid_api_key", "authentication_error", {"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.post("/videos")
    async def create_video(request: Request):
        body, from_form, files = await _read_body(request)
        try:
            req, model, fps = parse_create(body, from_form, engine.pipeline.config.sample.fps)
            req = engine.resolve(req)
        except RequestError as e:
            raise ApiError(422, e.message, e.field) from None
        job_id = f"video_{uuid.uuid4().hex}"
        return await run_in_threadpool(_enqueue, job_id, req, model or engine.model_name, fps, files)

    def _attach_images(job_id: str, req, files: dict[str, bytes]):
        """(the request reading the stored uploads, the record's image fields): the images are
        checked as the CLI checks --image/--last-image (model type, format, size, aspect), so a bad
        one is a 422 now rather than a failed job; the video takes the first image's aspect ratio."""
        if engine.model_type in IMAGE_OPTIONAL and not files:
            return req, {}
        paths = {field: store.write_input(job_id, field, data) for field, data in files.items()}
        width, height = req.size
        try:
            prompt = image_prompt(paths.get("input_reference"), paths.get("last_reference"), width * height,
                                  engine.model_type, names=tuple(IMAGE_FIELDS))
        except ValueError as e:
            store.delete_inputs(job_id)
            message = str(e)
            for path in paths.values():  # the client sees its upload, not the server's paths
                message = message.replace(str(path), "the uploaded file")
            field = next((f for f in IMAGE_FIELDS if message.startswith(f)), "input_reference")
            if not files:
                message += " (send it as a multipart/form-data file field)"
            raise ApiError(422, message, field) from None
        images = {IMAGE_FIELDS[field]: str(path) for field, path in paths.items()}
        shown = {"input_reference": prompt.first} | ({"last_reference": prompt.last} if prompt.last else {})
        fields = {name: f"{image.width}x{image.height}" for name, image in shown.items()}
        return replace(req, **images), fields | {"size": f"{prompt.width}x{prompt.height}"}

    def _enqueue(job_id: str, req, model: str, fps: int, files: dict[str, bytes]):
        req, image_fields = _attach_images(job_id, req, files)
        record = new_record(job_id, req, model, fps, time.time()) | image_fields
        store.put(record)  # before submit: the worker's first update must find the row
        try:
            engine.submit(req, job_id=record["id"], listener=JobRecorder(store, metrics, fps))
        except QueueFull as e:
            store.delete(record["id"])
            raise ApiError(429, str(e), None, "queue_full", "rate_limit_error", {"Retry-After": "1"}) from None
        except EngineClosed as e:
            store.delete(record["id"])
            raise ApiError(503, f"the server is not accepting jobs: {e}", None, "unavailable", "server_error") from None
        return JSONResponse(record, headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @v1.get("/videos/{video_id}")
    def retrieve_video(video_id: str):
        record = store.get(video_id)
        if record is None:
            raise _not_found(video_id)
        job = engine.get(video_id)
        obj = job_object(record, job.snapshot() if job is not None else None)
        return JSONResponse(obj, headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @v1.get("/videos")
    def list_videos(after: str | None = None, limit: str = "20", order: str = "desc"):
        try:
            count = int(limit)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_LIST_LIMIT:
            raise ApiError(400, f"limit must be an integer in [1, {MAX_LIST_LIMIT}], got {limit!r}", "limit")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order must be 'asc' or 'desc', got {order!r}", "order")
        try:
            records, has_more = store.list(after, count, order)
        except KeyError:
            raise ApiError(400, f"after must be the id of a listed job; {after!r} is unknown", "after") from None
        data = []
        for record in records:
            job = engine.get(record["id"])
            data.append(job_object(record, job.snapshot() if job is not None else None))
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}

    @v1.get("/videos/{video_id}/content")
    def download_content(video_id: str, variant: str = "video"):
        if variant != "video":
            raise ApiError(400, f"variant must be 'video' (thumbnails and spritesheets are not made), got "
                                f"{variant!r}", "variant")
        record = store.get(video_id)
        if record is None:
            raise _not_found(video_id)
        path = store.video_path(video_id)
        if record["status"] != "completed" or not path.is_file():
            raise ApiError(404, f"video {video_id!r} has no content: its status is {record['status']!r} "
                                f"(content exists once it is 'completed')", "video_id", "not_ready",
                           "not_found_error")
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @v1.delete("/videos/{video_id}")
    def delete_video(video_id: str):
        job = engine.cancel(video_id)
        if job is not None:
            job.wait(options.cancel_wait_s)  # a running job stops after its current step
        if not store.delete(video_id):
            raise _not_found(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    app.include_router(v1)

    @app.get("/health")
    def health():
        running = engine.running
        body = {"status": "ok" if engine.fatal_error is None else "failed", "model": engine.model_name,
                "queue_depth": engine.queue_depth, "running": running.id if running is not None else None,
                "warmup_seconds": engine.warmup_seconds, "error": engine.fatal_error}
        return JSONResponse(body, 200 if engine.fatal_error is None else 503)

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


async def _read_body(request: Request) -> tuple[dict, bool, dict[str, bytes]]:
    """(the text fields, whether they came as form text, the uploaded files by field name: only
    `input_reference` and `last_reference`, once each; the body bound applies to all of it)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=len(IMAGE_FIELDS), max_fields=64)
        except Exception as e:  # noqa: BLE001 - python-multipart's parse errors have no common base
            raise ApiError(400, f"the form body could not be parsed: {e}", "body") from None
        fields, files = {}, {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                if name in IMAGE_FIELDS:
                    raise ApiError(422, f"{name} must be an uploaded image file, not a text field", name)
                fields[name] = value
            elif name not in IMAGE_FIELDS:
                raise ApiError(422, f"field {name!r} is a file; the file fields are "
                                    f"{', '.join(IMAGE_FIELDS)}", name)
            elif name in files:
                raise ApiError(422, f"{name} was sent more than once", name)
            else:
                files[name] = await value.read()
        await form.close()
        return fields, True, files
    if kind not in ("application/json", ""):
        raise ApiError(415, f"send the body as application/json or multipart/form-data, not {kind!r}", "body")
    raw = await request.body()
    try:
        return json.loads(raw), False, {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", "body", "invalid_json") from None
