"""Writes small random checkpoints in the real on-disk layouts (original Wan2.1 and diffusers),
with the CLIP image encoder of i2v/flf2v models in each layout's own format."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_engine.configs import ImageEncoderConfig, ModelConfig
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
    torch.save(vae_sd, root / ("Wan2.2_VAE.pth" if config.vae.residual else "Wan2.1_VAE.pth"))
    wan_t5 = hf_to_wan_t5(text.model.state_dict())
    torch.save({k: v.clone() for k, v in wan_t5.items()}, root / "models_t5_umt5-xxl-enc-bf16.pth")
    text.tokenizer.hf.save_pretrained(root / "google" / "umt5-xxl")
    clip = random_clip(config, seed)
    if clip is not None:
        hf = {f"vision_model.{k}": v for k, v in clip.state_dict().items()}
        torch.save(official_clip_from_transformers(hf, config.image_encoder.num_layers, config.image_encoder.dim),
                   root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
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
        "num_layers": d.num_layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": d.eps,
        "image_dim": d.image_dim if d.uses_clip else None,
        "added_kv_proj_dim": d.dim if d.uses_clip else None,
        "pos_embed_seq_len": 2 * d.image_tokens if d.model_type == "flf2v" else None}))
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
    clip = random_clip(config, seed)
    if clip is not None:
        clip.save_pretrained(root / "image_encoder")
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
        "use_flow_sigmas": True, "flow_shift": 3.0, "num_train_timesteps": 1000}))
    return root


def clip_vision_config(cfg: ImageEncoderConfig):
    """transformers' CLIPVisionConfig of an ImageEncoderConfig (exact GELU, as the official ViT-H/14)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=cfg.dim, intermediate_size=cfg.mlp_dim, num_attention_heads=cfg.num_heads,
                            num_hidden_layers=cfg.num_layers, image_size=cfg.image_size, patch_size=cfg.patch_size,
                            hidden_act="gelu", layer_norm_eps=cfg.eps)


def official_clip_from_transformers(hf: dict, layers: int, dim: int) -> dict:
    """The official `XLMRobertaCLIP` file for transformers CLIPVisionModel weights (names from
    `wan/modules/clip.py`, defined here independently of the loader), plus head and text-tower extras."""
    hf = {k.removeprefix("vision_model."): v for k, v in hf.items()}
    out = {
        "visual.patch_embedding.weight": hf["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": hf["embeddings.class_embedding"].view(1, 1, -1),
        "visual.pos_embedding": hf["embeddings.position_embedding.weight"][None],
        "visual.pre_norm.weight": hf["pre_layrnorm.weight"], "visual.pre_norm.bias": hf["pre_layrnorm.bias"],
        "visual.post_norm.weight": hf["post_layernorm.weight"], "visual.post_norm.bias": hf["post_layernorm.bias"],
    }
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for leaf in ("weight", "bias"):
            out[dst + f"attn.to_qkv.{leaf}"] = torch.cat([hf[src + f"self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            for theirs, ours in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"),
                                 ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
                out[dst + f"{ours}.{leaf}"] = hf[src + f"{theirs}.{leaf}"]
    gen = torch.Generator().manual_seed(7)
    out["visual.head"] = torch.randn(dim, 32, generator=gen)
    out["textual.token_embedding.weight"] = torch.randn(10, 16, generator=gen)
    out["textual.head.0.weight"] = torch.randn(8, 16, generator=gen)
    out["log_scale"] = torch.tensor(math.log(1 / 0.07))
    return {k: v.clone().contiguous() for k, v in out.items()}


def random_clip(config: ModelConfig, seed: int = 0):
    """A seeded random transformers CLIPVisionModel of the model's image encoder (None for t2v)."""
    if config.image_encoder is None:
        return None
    from transformers import CLIPVisionModel

    torch.manual_seed(seed + 3)
    return CLIPVisionModel(clip_vision_config(config.image_encoder)).eval()


def write_two_experts(root: Path, config: ModelConfig, layout: str, seed: int = 0, boundary: float | None = None) -> Path:
    """A Wan2.2 A14B-style folder: the layout's files with the DiT as two experts. The high-noise
    expert has `seed`'s weights, the low-noise one seed + 4's (as the preset's random experts), so
    the folder loads to the preset `config` names. diffusers: `boundary` goes to model_index.json."""
    root = Path(root)
    if layout == "original":
        write_original(root, config, seed)
        high = root / "high_noise_model"
        high.mkdir()
        for f in [*root.glob("diffusion_pytorch_model*"), root / "config.json"]:
            f.rename(high / f.name)
        low = root / "low_noise_model"
        low.mkdir()
        (low / "config.json").write_text((high / "config.json").read_text())
        _save_shards(_low_noise_weights(config, seed), low, "diffusion_pytorch_model", 2)
        return root
    write_diffusers(root, config, seed)
    low = root / "transformer_2"
    low.mkdir()
    (low / "config.json").write_text((root / "transformer" / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in official_to_diffusers_dit(_low_noise_weights(config, seed)).items()},
              str(low / "diffusion_pytorch_model.safetensors"))
    index = json.loads((root / "model_index.json").read_text())
    index["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
    if boundary is not None:
        index["boundary_ratio"] = boundary
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def _low_noise_weights(config: ModelConfig, seed: int) -> dict:
    with torch.device("meta"):
        dit = WanDiT(config.dit)
    return random_state_dict(dit, seed + 4)
