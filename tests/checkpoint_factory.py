"""Writes small random checkpoints in the real on-disk layouts (original Wan2.1 and diffusers)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_engine.configs import ModelConfig
from wan_engine.loading.dit_format import official_to_diffusers_dit
from wan_engine.loading.random_init import random_state_dict
from wan_engine.loading.t5_format import hf_to_wan_t5
from wan_engine.loading.vae_format import official_to_diffusers_vae
from wan_engine.reference.dit import WanDiT
from wan_engine.assembly import random_text_encoder
from wan_engine.reference.vae import WanVAE


def random_weights(config: ModelConfig, seed: int = 0):
    """(dit, vae, text encoder HF) state dicts with official DiT/VAE names, fp32."""
    with torch.device("meta"):
        dit, vae = WanDiT(config.dit), WanVAE(config.vae)
    text = random_text_encoder(config.t5, seed=seed + 2)
    return random_state_dict(dit, seed), random_state_dict(vae, seed + 1), text


def _save_shards(sd: dict, directory: Path, stem: str, shards: int) -> None:
    keys = sorted(sd)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(directory / name))
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def official_dit_config_json(config: ModelConfig) -> dict:
    d = config.dit
    # As the official release's config.json: no text_dim (it must be inferred from the weights).
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": d.dim, "eps": d.eps,
            "ffn_dim": d.ffn_dim, "freq_dim": d.freq_dim, "in_dim": d.in_dim, "model_type": d.model_type,
            "num_heads": d.num_heads, "num_layers": d.num_layers, "out_dim": d.out_dim, "text_len": d.text_len}


def write_original(root: Path, config: ModelConfig, seed: int = 0, shards: int = 2) -> Path:
    """Original Wan2.1 layout with a sharded DiT and a shard index."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dit_sd, vae_sd, text = random_weights(config, seed)
    _save_shards(dit_sd, root, "diffusion_pytorch_model", shards)
    (root / "config.json").write_text(json.dumps(official_dit_config_json(config)))
    torch.save(vae_sd, root / "Wan2.1_VAE.pth")
    wan_t5 = hf_to_wan_t5(text.model.state_dict())
    torch.save({k: v.clone() for k, v in wan_t5.items()}, root / "models_t5_umt5-xxl-enc-bf16.pth")
    text.tokenizer.hf.save_pretrained(root / "google" / "umt5-xxl")
    return root


def write_diffusers(root: Path, config: ModelConfig, seed: int = 0) -> Path:
    """diffusers layout: transformer/, vae/, text_encoder/, tokenizer/, scheduler/."""
    root = Path(root)
    dit_sd, vae_sd, text = random_weights(config, seed)
    d = config.dit
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "scheduler": ["diffusers", "UniPCMultistepScheduler"]}))
    (root / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "WanTransformer3DModel", "patch_size": list(d.patch_size),
        "num_attention_heads": d.num_heads, "attention_head_dim": d.head_dim, "in_channels": d.in_dim,
        "out_channels": d.out_dim, "text_dim": d.text_dim, "freq_dim": d.freq_dim, "ffn_dim": d.ffn_dim,
        "num_layers": d.num_layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": d.eps}))
    save_file({k: v.contiguous() for k, v in official_to_diffusers_dit(dit_sd).items()},
              str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    v = config.vae
    (root / "vae" / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderKLWan", "base_dim": v.base_dim, "z_dim": v.z_dim,
        "dim_mult": list(v.dim_mult), "num_res_blocks": v.num_res_blocks,
        "temperal_downsample": list(v.temporal_downsample)}))
    save_file({k: t.contiguous() for k, t in official_to_diffusers_vae(vae_sd).items()},
              str(root / "vae" / "diffusion_pytorch_model.safetensors"))
    text.model.save_pretrained(root / "text_encoder")
    text.tokenizer.hf.save_pretrained(root / "tokenizer")
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
        "use_flow_sigmas": True, "flow_shift": 3.0, "num_train_timesteps": 1000}))
    return root
