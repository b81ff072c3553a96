"""The `/v1/videos` wire format: a create body (JSON or form fields) -> GenerationRequest, and the
job object the server returns (OpenAI's Video fields, plus the resolved Wan parameters).

Form fields arrive as strings (the `openai` package sends `create` as multipart/form-data, with
`extra_body` merged into the form), so numbers and `cfg` are parsed from text there; a JSON body
must carry real numbers and booleans. Either way a bad value is a RequestError naming the field and
what it accepts. Images (i2v/flf2v models) come as multipart file fields, `input_reference` (the
first frame, as in OpenAI's API) and `last_reference` (the last frame, flf2v); `image`/`last_image`
are deliberately not fields: a client must not name files on the server.
"""
from __future__ import annotations

import math

from ..engine import GenerationRequest, JobSnapshot, RequestError
from ..video import WAN_FPS

INT_FIELDS = ("num_frames", "seed", "num_inference_steps", "fps")
FLOAT_FIELDS = ("guidance_scale", "guidance_scale_2", "shift", "seconds")
BOOL_FIELDS = ("cfg",)
TEXT_FIELDS = ("prompt", "negative_prompt", "size", "solver", "cache", "sampling", "model")
FIELDS = frozenset(INT_FIELDS + FLOAT_FIELDS + BOOL_FIELDS + TEXT_FIELDS)
FORM_BOOLS = {"true": True, "false": False}  # what httpx (and so `openai`) sends; "1", "no", "" are refused
# Multipart file fields -> the GenerationRequest fields they become (a path under the job store).
IMAGE_FIELDS = {"input_reference": "image", "last_reference": "last_image"}
MAX_MODEL_CHARS = 200
MAX_FPS = 120


def _int(field: str, value, from_form: bool) -> int:
    if from_form and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise RequestError(field, f"{field} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"{field} must be an integer, got {value!r}")
    return value


def _float(field: str, value, from_form: bool) -> float:
    # `seconds` is a string even in OpenAI's JSON schema ("4"), so it is parsed from text always.
    if isinstance(value, str) and (from_form or field == "seconds"):
        try:
            value = float(value.strip())
        except ValueError:
            raise RequestError(field, f"{field} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"{field} must be a finite number, got {value!r}")
    return float(value)


def _bool(field: str, value, from_form: bool) -> bool:
    if from_form and isinstance(value, str) and value in FORM_BOOLS:
        return FORM_BOOLS[value]
    if not isinstance(value, bool):
        raise RequestError(field, f"{field} must be true or false, got {value!r}")
    return value


def parse_size(text) -> tuple[int, int]:
    if not isinstance(text, str):
        raise RequestError("size", f"size must be a string WIDTHxHEIGHT such as '832x480', got {text!r}")
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RequestError("size", f"size must look like '832x480' (WIDTHxHEIGHT), got {text!r}") from None
    return width, height


def frames_for_seconds(seconds: float, fps: int) -> int:
    """`seconds x fps + 1` frames (Wan's clips are 4n+1: 81 frames are 5 s at 16 fps)."""
    if seconds <= 0:
        raise RequestError("seconds", f"seconds must be > 0, got {seconds:g}")
    frames = seconds * fps
    if abs(frames - round(frames)) > 1e-6 or round(frames) % 4:
        raise RequestError("seconds", f"seconds x fps must be a multiple of 4 (Wan's frame counts are 4n+1); "
                                      f"{seconds:g} s at {fps} fps gives {frames:g} frames + 1")
    return int(round(frames)) + 1


def parse_create(body, from_form: bool, default_fps: int = WAN_FPS) -> tuple[GenerationRequest, str | None, int]:
    """(the request, the `model` the client named or None, the fps of the MP4: `fps`, else the
    model's `default_fps`)."""
    if not isinstance(body, dict):
        raise RequestError("body", f"the request body must be an object of fields, got {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise RequestError(unknown[0], f"unknown field {unknown[0]!r}; accepted fields: {', '.join(sorted(FIELDS))}")
    values = {}
    for name, value in body.items():
        if value is None:
            continue
        if name in INT_FIELDS:
            values[name] = _int(name, value, from_form)
        elif name in FLOAT_FIELDS:
            values[name] = _float(name, value, from_form)
        elif name in BOOL_FIELDS:
            values[name] = _bool(name, value, from_form)
        elif not isinstance(value, str):
            raise RequestError(name, f"{name} must be a string, got {value!r}")
        else:
            values[name] = value
    if "prompt" not in values:
        raise RequestError("prompt", "prompt is required")
    model = values.pop("model", None)
    if model is not None and not 0 < len(model) <= MAX_MODEL_CHARS:
        raise RequestError("model", f"model must be 1 to {MAX_MODEL_CHARS} characters")
    fps = values.pop("fps", default_fps)
    if not 1 <= fps <= MAX_FPS:
        raise RequestError("fps", f"fps must be in [1, {MAX_FPS}], got {fps}")
    seconds = values.pop("seconds", None)
    if seconds is not None:
        if "num_frames" in values:
            raise RequestError("seconds", "give num_frames or seconds, not both")
        values["num_frames"] = frames_for_seconds(seconds, fps)
    if "size" in values:
        values["size"] = parse_size(values["size"])
    return GenerationRequest(**values), model, fps


def job_object(record: dict, live: JobSnapshot | None = None) -> dict:
    """The stored record, with the live progress of a job still in the Engine. A final status
    comes from the store only: it is written after the MP4, so `completed` always has its file."""
    obj = dict(record)
    if live is not None and obj["status"] in ("queued", "in_progress"):
        if live.status in ("queued", "in_progress"):
            obj["status"] = live.status
        obj["progress"] = min(live.progress, 99)
    return obj


def new_record(job_id: str, request: GenerationRequest, model: str, fps: int, created_at: float) -> dict:
    """The job object at creation: OpenAI's Video fields and the resolved Wan parameters."""
    width, height = request.size
    return {
        "id": job_id, "object": "video", "model": model, "status": "queued", "progress": 0,
        "created_at": int(created_at), "completed_at": None, "expires_at": None, "error": None,
        "prompt": request.prompt, "size": f"{width}x{height}",
        "seconds": f"{(request.num_frames - 1) / fps:g}", "fps": fps,
        "negative_prompt": request.negative_prompt, "num_frames": request.num_frames,
        "num_inference_steps": request.num_inference_steps, "guidance_scale": request.guidance_scale,
        "guidance_scale_2": request.guidance_scale_2,
        "shift": request.shift, "solver": request.solver, "cache": request.cache, "seed": request.seed,
        "cfg": request.cfg, "sampling": request.sampling, "input_reference": None, "last_reference": None,
        "timings": {},
    }


def error_body(message: str, param: str | None = None, code: str = "invalid_request",
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
