"""wan_engine: a performance-first inference engine for the Wan video diffusion models.

    import wan_engine
    pipe = wan_engine.WanPipeline.from_pretrained("tiny")          # or a checkpoint directory
    frames = pipe.generate("a corgi surfing", num_frames=9)        # uint8 [F, H, W, 3]
    wan_engine.save_video(frames, "out.mp4")
"""
from importlib import import_module

__version__ = "0.1.0"

# Resolved on first use so `import wan_engine` stays light (no transformers import).
_EXPORTS = {
    "WanPipeline": "wan_engine.pipelines.t2v",
    "GenerationResult": "wan_engine.pipelines.t2v",
    "Engine": "wan_engine.engine",
    "GenerationRequest": "wan_engine.engine",
    "load_dit": "wan_engine.assembly",
    "load_vae": "wan_engine.assembly",
    "load_text_encoder": "wan_engine.assembly",
    "CheckpointError": "wan_engine.loading",
    "save_video": "wan_engine.video",
    "read_video": "wan_engine.video",
    "ModelConfig": "wan_engine.configs",
    "PRESETS": "wan_engine.configs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wan_engine' has no attribute {name!r}")
