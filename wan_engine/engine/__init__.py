"""The embeddable Engine: load once, queue requests, run one at a time per GPU group.

See `engine.py` for the threading and multi-rank model; `request.py` for the accepted fields.
"""
from .engine import Engine
from .job import (
    CANCELLED, COMPLETED, FAILED, FINISHED, IN_PROGRESS, QUEUED, STATUSES, EngineClosed, GenerationCancelled, Job,
    JobError, JobListener, JobSnapshot, QueueFull,
)
from .request import GenerationRequest, RequestError, RequestLimits

__all__ = [
    "CANCELLED", "COMPLETED", "FAILED", "FINISHED", "IN_PROGRESS", "QUEUED", "STATUSES", "Engine", "EngineClosed",
    "GenerationCancelled", "GenerationRequest", "Job", "JobError", "JobListener", "JobSnapshot", "QueueFull",
    "RequestError", "RequestLimits",
]
