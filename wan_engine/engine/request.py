"""What a caller asks the Engine for, checked field by field before it is queued.

Field names follow diffusers and the OpenAI-style server (`num_inference_steps`,
`guidance_scale`), so one name travels from an HTTP body to the error that refuses it.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace

from .. import validation
from ..configs import SampleDefaults
from ..sampling import get_sampling_preset


class RequestError(ValueError):
    """A request field is missing, malformed or out of range; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class RequestLimits:
    """What one server accepts per request: bounds the memory and time a single job can take."""

    max_prompt_chars: int = 2000
    max_width: int = 1920
    max_height: int = 1920
    max_frames: int = 241
    max_steps: int = 200


@dataclass(frozen=True)
class GenerationRequest:
    """One generation (text-to-video; with `image` image-to-video). None means the model's default
    (the seed: drawn at submit)."""

    prompt: str
    negative_prompt: str | None = None
    size: tuple[int, int] | None = None  # (width, height)
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None  # every step; two-expert models: the high-noise stage's
    shift: float | None = None
    seed: int | None = None
    solver: str | None = None
    cache: str | None = None  # a step-cache spec such as "teacache:0.2"; None: off (lossless)
    cfg: bool | None = None  # False: conditional branch only (distilled models); None: the sampling's (True)
    sampling: str | None = None  # a named sampling preset ("distill-4step"); None: the model's defaults
    # i2v/flf2v models: local image files read by the process that runs the model (the HTTP
    # server does not accept these fields: a client must not name files on the server).
    image: str | None = None
    last_image: str | None = None
    # Two-expert models (Wan2.2 A14B): the low-noise stage's guidance (diffusers' name); None: the
    # model's default, or guidance_scale when only that is given (both stages alike).
    guidance_scale_2: float | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["size"] = None if self.size is None else list(self.size)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "GenerationRequest":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(unknown[0], f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(known))}")
        if "prompt" not in data:
            raise RequestError("prompt", "prompt is required")
        size = data.get("size")
        return cls(**{**data, "size": None if size is None else tuple(size)})


def _checked(field: str, check, value):
    try:
        return check(value)
    except ValueError as e:
        raise RequestError(field, f"invalid {field}: {e}") from None


def _at_most(field: str, value: int, bound: int) -> int:
    if value > bound:
        raise RequestError(field, f"{field} must be at most {bound} on this server, got {value}")
    return value


def check_cache_spec(spec):
    """The `CacheConfig` of a spec string (None: no cache); RequestError naming `cache` if malformed."""
    from ..cache import CacheConfig

    if spec is None:
        return None
    if not isinstance(spec, str):
        raise RequestError("cache", f"cache must be a string such as 'teacache:0.2', got {spec!r}")
    return _checked("cache", CacheConfig.parse, spec)


def _low_noise_guidance(req: GenerationRequest, defaults: SampleDefaults) -> float | None:
    """A two-expert model's low-noise guidance, resolved as the pipeline does; refused for one DiT."""
    if defaults.low_noise_guidance is None:
        if req.guidance_scale_2 is not None:
            raise RequestError("guidance_scale_2", "guidance_scale_2 applies to two-expert models (Wan2.2 A14B) "
                                                   "only; this model has one DiT")
        return None
    if req.guidance_scale_2 is not None:
        return _checked("guidance_scale_2", lambda g: validation.check_guidance(g, "guidance_scale_2"),
                        req.guidance_scale_2)
    return defaults.low_noise_guidance if req.guidance_scale is None else req.guidance_scale


def resolve_request(req: GenerationRequest, defaults: SampleDefaults, limits: RequestLimits,
                    draw_seed: bool = True, size_multiple: int = 16) -> GenerationRequest:
    """`req` with every field checked and every default filled in (the seed drawn when
    `draw_seed`, so the job can report it before it runs); raises RequestError naming the field.
    `size_multiple`: the model's (`ModelConfig.size_multiple`)."""
    if not isinstance(req, GenerationRequest):
        raise TypeError(f"expected a GenerationRequest, got {type(req).__name__}")
    preset = None if req.sampling is None else _checked("sampling", get_sampling_preset, req.sampling)
    if preset is not None:  # the preset's steps and shift stand in for the model's defaults
        defaults = replace(defaults, steps=preset.steps, shift=preset.shift)
    if req.cfg is not None and not isinstance(req.cfg, bool):
        raise RequestError("cfg", f"cfg must be true, false or null, got {req.cfg!r}")
    if preset is not None and req.num_inference_steps not in (None, preset.steps):
        # Refused here rather than when the job runs: the preset's solver has fixed timesteps.
        raise RequestError("num_inference_steps", f"num_inference_steps must be {preset.steps} (or unset) with "
                                                  f"sampling {req.sampling!r}, got {req.num_inference_steps!r}")
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise RequestError("prompt", "prompt must be a non-empty string")
    if len(req.prompt) > limits.max_prompt_chars:
        raise RequestError("prompt", f"prompt must be at most {limits.max_prompt_chars} characters, "
                                     f"got {len(req.prompt)}")
    negative = req.negative_prompt
    if negative is not None and (not isinstance(negative, str) or len(negative) > limits.max_prompt_chars):
        raise RequestError("negative_prompt", f"negative_prompt must be a string of at most "
                                              f"{limits.max_prompt_chars} characters")
    width, height = _checked("size", lambda size: validation.check_size(size, size_multiple),
                             defaults.size if req.size is None else req.size)
    _at_most("size", width, limits.max_width)  # message names the size; the bound is per side
    _at_most("size", height, limits.max_height)
    frames = _checked("num_frames", validation.check_num_frames,
                      defaults.num_frames if req.num_frames is None else req.num_frames)
    steps = _checked("num_inference_steps", validation.check_steps,
                     defaults.steps if req.num_inference_steps is None else req.num_inference_steps)
    seed = req.seed
    if seed is not None:
        _checked("seed", validation.check_seed, seed)
    elif draw_seed:
        seed = random.SystemRandom().randrange(validation.SEED_BOUND)
    check_cache_spec(req.cache)
    for field in ("image", "last_image"):
        value = getattr(req, field)
        if value is not None and (not isinstance(value, str) or not value):
            raise RequestError(field, f"{field} must be the path of an image file, got {value!r}")
    return replace(
        req,
        size=(width, height),
        num_frames=_at_most("num_frames", frames, limits.max_frames),
        num_inference_steps=_at_most("num_inference_steps", steps, limits.max_steps),
        guidance_scale=_checked("guidance_scale", validation.check_guidance,
                                defaults.guidance if req.guidance_scale is None else req.guidance_scale),
        guidance_scale_2=_low_noise_guidance(req, defaults),
        shift=_checked("shift", validation.check_shift, defaults.shift if req.shift is None else req.shift),
        seed=seed,
        cfg=req.cfg if req.cfg is not None else (preset.cfg if preset is not None else True),
        solver=None if preset is not None and req.solver is None else _checked(
            "solver", validation.check_solver, defaults.solver if req.solver is None else req.solver),
    )
