"""The HTTP face: an OpenAI-style /v1/videos server over the Engine, with durable jobs.

`create_app(engine, store)` builds the FastAPI app (embed it, or mount it in your own);
`run_server` is `wan-engine serve`. Needs the `serve` extra (fastapi, uvicorn, ...).
"""
