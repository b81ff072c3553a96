"""Fused Triton kernels for the Wan DiT block (and the VAE's norm + SiLU), each beside its pure-torch oracle (`*_ref`).

Installed as `wan_engine.kernels`. Without a GPU the kernels run under Triton's interpreter, which
must be selected (TRITON_INTERPRET=1) before a kernel module is imported.

Symbols resolve lazily: importing this package does not import triton. That matters because, when
Python runs from the repository root, transformers probes for Hugging Face's unrelated `kernels`
package, finds this folder under that name and imports it.
"""
from importlib import import_module

_MODULES = {
    "channel_rms_norm_silu": "channel_rms_norm_silu",
    "channel_rms_norm_silu_ref": "channel_rms_norm_silu",
    "gated_residual_norm": "gated_residual",
    "gated_residual_norm_ref": "gated_residual",
    "layer_norm_affine": "layer_norm_modulate",
    "layer_norm_affine_ref": "layer_norm_modulate",
    "layer_norm_modulate": "layer_norm_modulate",
    "layer_norm_modulate_ref": "layer_norm_modulate",
    "rms_norm": "rms_norm",
    "rms_norm_ref": "rms_norm",
    "rms_norm_rope_qk": "rms_norm_rope",
    "rms_norm_rope_qk_ref": "rms_norm_rope",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = import_module(f".{_MODULES[name]}", __name__)
        # Bind every symbol of that module now: importing submodule `rms_norm` has just set the
        # package attribute `rms_norm` to the module, which must not shadow the function.
        for symbol, owner in _MODULES.items():
            if owner == _MODULES[name]:
                globals()[symbol] = getattr(module, symbol)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
