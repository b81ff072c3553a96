"""Assembly: the one layer that knows every other one.

It builds reference modules from the state dicts `loading` reads, wraps the DiT in the executor
and applies sequence parallelism, and hands the pipeline its components. Nothing below imports it.
"""
from .components import load_dit, load_text_encoder, load_vae
from .image_encoder import load_image_encoder, random_image_encoder
from .pipeline import load_pipeline_components, peek_model, random_components
from .text_encoder import build_umt5_encoder, random_text_encoder, text_encoder_from_files, text_encoder_from_state_dict

__all__ = ["build_umt5_encoder", "load_dit", "load_pipeline_components", "load_text_encoder", "load_vae",
           "random_components", "random_text_encoder", "text_encoder_from_files", "text_encoder_from_state_dict"]
__all__ += ["load_image_encoder", "peek_model", "random_image_encoder"]
