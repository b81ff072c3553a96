"""Checkpoint files of both on-disk layouts (original Wan2.1 and diffusers): reading, key maps, configs.

This layer knows files, tensor names and shapes only; modules are built from its state dicts by
`wan_engine.assembly` (`load_dit`, `load_vae`, `load_text_encoder`).
"""
from .errors import CheckpointError
from .state_dicts import dit_config_of, read_dit_state_dict, read_vae_state_dict, vae_config_of

__all__ = ["CheckpointError", "dit_config_of", "read_dit_state_dict", "read_vae_state_dict", "vae_config_of"]
