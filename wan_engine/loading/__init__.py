"""Checkpoint loading for both on-disk layouts (original Wan2.1 and diffusers)."""
from .components import load_dit, load_text_encoder, load_vae
from .errors import CheckpointError

__all__ = ["CheckpointError", "load_dit", "load_text_encoder", "load_vae"]
