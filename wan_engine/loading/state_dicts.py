"""The state dicts of the DiT and the VAE, with official names, from either on-disk layout.

Each reader takes the model root, the component's own folder, or its weight file, and returns
tensors under the official Wan2.1 names (diffusers names are converted). Building modules from
them is the assembly layer's job (`wan_engine.assembly`); this layer knows files and names only.
"""
from __future__ import annotations

from pathlib import Path

from ..configs import DiTConfig, VAEConfig
from .checkpoint import read_sharded, read_weights
from .errors import CheckpointError
from .layout import DIT_STEM, ORIGINAL_VAE, WAN22_VAE, detect_layout, original_vae


def _rename(convert, sd: dict, source) -> dict:
    try:
        return convert(sd)
    except KeyError as e:
        raise CheckpointError(f"{source}: unknown tensor name {e.args[0]!r} for this model format") from None


def _infer(infer_config, sd: dict, source, *args):
    """A config inferred from tensor shapes; a state dict of another model is a CheckpointError
    naming the file (the format modules raise KeyError naming the key)."""
    try:
        return infer_config(sd, *args)
    except KeyError as e:
        raise CheckpointError(f"{source}: {e.args[0] if e.args else e}") from None


def is_diffusers_dit(sd: dict) -> bool:
    return any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k for k in sd)


def official_dit_keys(keys, source) -> dict[str, str]:
    """{official name: stored key} for the tensor names of a DiT checkpoint in either layout."""
    from .dit_format import diffusers_to_official_dit

    names = {k: k for k in keys}
    return _rename(diffusers_to_official_dit, names, source) if is_diffusers_dit(names) else names


def read_dit_state_dict(path: str | Path) -> tuple[dict, dict]:
    """(official-name state dict, config.json contents) of a DiT given a root, folder or file."""
    from .dit_format import diffusers_to_official_dit

    path = Path(path).expanduser()
    if path.is_file():
        sd, config = read_weights(path), {}
    else:
        layout = detect_layout(path)
        sd, config = read_sharded(layout.dit_dir, DIT_STEM), layout.dit_config
    if is_diffusers_dit(sd):
        sd = _rename(diffusers_to_official_dit, sd, path)
    return sd, config


def read_vae_state_dict(path: str | Path) -> dict:
    from .vae_format import diffusers_to_official_vae

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"VAE checkpoint not found: {path}")
    if path.is_dir():
        if original_vae(path) is not None and original_vae(path).is_file():
            path = original_vae(path)
        elif any(path.glob(f"{DIT_STEM}*.safetensors")):
            pass  # a diffusers vae/ folder
        else:
            vae = detect_layout(path).vae
            if vae is None:
                raise CheckpointError(f"{path}: no VAE found (expected {ORIGINAL_VAE}, {WAN22_VAE} or a vae/ folder)")
            path = vae
    sd = read_sharded(path, DIT_STEM) if path.is_dir() else read_weights(path)
    if any(k.startswith(("encoder.conv_in", "decoder.conv_in", "quant_conv", "post_quant_conv")) for k in sd):
        sd = _rename(diffusers_to_official_vae, sd, path)
    return sd


def dit_config_of(sd: dict, source, config_json: dict | None = None) -> DiTConfig:
    """The DiT config inferred from the tensor shapes (and config.json where they are silent)."""
    from .dit_format import infer_dit_config

    return _infer(infer_dit_config, sd, source, config_json)


def vae_config_of(sd: dict, source) -> VAEConfig:
    """The VAE config inferred from the tensor shapes (`Wan2.1_VAE.pth` carries none)."""
    from .vae_format import infer_vae_config

    return _infer(infer_vae_config, sd, source)
