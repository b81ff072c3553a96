"""Fused Triton kernels for the Wan DiT block, each beside its pure-torch oracle (`*_ref`).

Installed as `wan_engine.kernels`. Without a GPU the kernels run under Triton's interpreter, which
must be selected (TRITON_INTERPRET=1) before this package is imported.
"""
from .gated_residual import gated_residual_norm, gated_residual_norm_ref
from .layer_norm_modulate import (
    layer_norm_affine,
    layer_norm_affine_ref,
    layer_norm_modulate,
    layer_norm_modulate_ref,
)
from .rms_norm import rms_norm, rms_norm_ref
from .rms_norm_rope import rms_norm_rope_qk, rms_norm_rope_qk_ref

__all__ = [
    "gated_residual_norm",
    "gated_residual_norm_ref",
    "layer_norm_affine",
    "layer_norm_affine_ref",
    "layer_norm_modulate",
    "layer_norm_modulate_ref",
    "rms_norm",
    "rms_norm_ref",
    "rms_norm_rope_qk",
    "rms_norm_rope_qk_ref",
]
