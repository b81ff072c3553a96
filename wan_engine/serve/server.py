"""`wan-engine serve`: load the model once, then serve /v1/videos with uvicorn.

Under torchrun every rank loads its part of the model; rank 0 serves HTTP and leads, the other
ranks follow (see `wan_engine.engine.engine`). A failed rank fails the running job with a
`rank_failed` error and stops the server: the process group cannot be trusted after a failed
collective, so rank 0 records the failure, refuses the queued jobs, exits with status 1 and
leaves restarting to the supervisor (systemd, Kubernetes, a shell loop). It never hangs: every
collective is bounded by --dist-timeout, idle followers included (rank 0 sends heartbeats).
"""
from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from ..engine import Engine, RequestLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue: int = 16
    output_dir: str = "wan_videos"
    max_body_bytes: int | None = None  # None: TEXT_BODY_BYTES, or IMAGE_BODY_BYTES for an i2v/flf2v model
    warmup: bool = True
    dist_timeout_s: float = 600.0
    limits: RequestLimits = RequestLimits()


def run_server(config: ServeConfig, pipeline_options: dict) -> int:
    """Serve until interrupted (status 0) or until a rank fails (status 1)."""
    import uvicorn

    from .app import IMAGE_BODY_BYTES, TEXT_BODY_BYTES, ServerOptions, create_app
    from .job_store import JobStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.api_key is not None and not config.api_key.strip():
        raise ValueError("--api-key must not be empty")
    engine = Engine.from_pretrained(config.model, max_queue=config.max_queue, limits=config.limits,
                                    warmup=config.warmup, dist_timeout_s=config.dist_timeout_s,
                                    **pipeline_options)
    if engine.rank != 0:
        return engine.follow()
    engine.start()  # heartbeats reach the followers from now on
    store = JobStore(config.output_dir)
    if store.recovered:
        log.warning("%d unfinished jobs of the previous run marked failed (server restarted)", store.recovered)

    @asynccontextmanager
    async def lifespan(app):
        yield
        # Graceful stop (SIGINT/SIGTERM, or a failed rank): the running job is cancelled at its next
        # step, the queued ones are cancelled, the followers are told to stop. uvicorn re-raises a
        # caught signal afterwards, so a SIGTERM'd server still ends with that signal's status.
        await run_in_threadpool(engine.close)
        store.close()

    body_bytes = config.max_body_bytes
    if body_bytes is None:
        body_bytes = TEXT_BODY_BYTES if engine.model_type == "t2v" else IMAGE_BODY_BYTES
    app = create_app(engine, store, ServerOptions(api_key=config.api_key, max_body_bytes=body_bytes),
                     lifespan=lifespan)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    engine.on_fatal = lambda message: setattr(server, "should_exit", True)
    print(f"wan-engine: serving {engine.model_name} on http://{config.host}:{config.port} "
          f"(jobs in {store.root})", file=sys.stderr, flush=True)
    server.run()
    fatal = engine.fatal_error
    if fatal is not None:
        print(f"wan-engine: error: {fatal}", file=sys.stderr)
        return 1
    return 0
