"""What the lent GPU machine's image lacks (design.md, "Running on a lent GPU"; the device tool's
KINDS.md lists the image's packages), for the tests that must run there."""

# `sys.modules[name] = None` makes both `import name` and `importlib.util.find_spec(name)` behave
# as if the package were not installed.
MISSING_ON_GPU_IMAGE = ("diffusers", "ftfy", "imageio_ffmpeg", "av", "flash_attn", "flash_attn_interface", "tensorrt",
                        "fastapi", "starlette", "uvicorn", "pydantic")
# The modules of the serve extra: the only ones allowed to need a package the image lacks.
SERVE_EXTRA_MODULES = ("wan_engine.serve.app", "wan_engine.serve.server")


def without_prompt_cleaning(pipe):
    """The official prompt cleaning needs ftfy, which the image lacks. A GPU test that compares runs
    of the same prompt turns it off on every side: the tokens are the same either way."""
    pipe.text_encoder.tokenizer.clean = False
    return pipe
