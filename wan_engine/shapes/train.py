"""Training the `shapes` model on the CPU: a small Wan-VAE, then a small Wan DiT on its latents.

Both are the reference modules of the real Wan2.1 architecture at toy width, trained from scratch:

1. VAE: reconstruction (MSE + L1) of random 5-frame crops around the moving shape, through the
   whole-clip pass (the chunked inference pass computes the same function). Afterwards the
   latent statistics are folded into its 1x1 `conv1`/`conv2`, so that its normalized latents
   use the official Wan2.1 mean/std (the loaders infer those for z_dim 16) and stay unit-scale.
2. Latents: clips of the training combinations are encoded once (normalized, official encode).
3. DiT: the official flow-matching objective. sigma = shift*u / (1 + (shift-1)*u) with u uniform
   (the distribution the shifted sampling schedule implies), x_t = (1 - sigma) x0 + sigma noise,
   target noise - x0, timestep 1000*sigma; conditioned on the frozen seeded tiny umT5's caption
   embeddings, with caption dropout (the empty caption) so that CFG works. EMA weights are kept.
4. Decoder: fine-tuned alone with the encoder frozen, so the DiT's latent space does not move.

Every phase runs to a time budget (and optional step cap), prints its losses and checkpoints to
`work_dir` every `checkpoint_s` seconds; a rerun resumes from the checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..assembly.text_encoder import random_text_encoder
from ..configs import (
    SHAPES_DIT, SHAPES_SHIFT, SHAPES_T5, SHAPES_VAE, DiTConfig, T5Config, VAEConfig,
)
from ..reference.dit import WanDiT
from ..reference.vae import WanVAE
from .checkpoints import _Clock, _load, _lr, _save
from .train_vae import finetune_decoder, fold_latent_stats, init_vae, train_vae, vae_crops  # noqa: F401
from .vocabulary import shapes_tokenizer
from .world import all_combos, random_clips


@dataclass(frozen=True)
class TrainPlan:
    seed: int = 0
    size: tuple[int, int] = (96, 96)  # (width, height) of the DiT's training clips
    frames: int = 17
    vae: VAEConfig = SHAPES_VAE
    vae_minutes: float = 34.0
    vae_steps: int | None = None
    # Crops as long as the clips (17 frames: the first chunk and four cached ones) at 40x40. Shorter
    # crops train faster but leave the later chunks untrained: trained on 9 frames, the VAE
    # reconstructed frame 0 of a 17-frame clip at 25 dB and frame 16 at 16 dB (measured).
    vae_batch: int = 2
    vae_crop: tuple[int, int, int] = (17, 40, 40)  # frames, height, width
    vae_lr: float = 3e-4
    decoder_minutes: float = 8.0  # the decoder alone, after the DiT: the latent space stays fixed
    decoder_steps: int | None = None
    decoder_lr: float = 2e-5
    decoder_batch: int = 1
    decoder_crop: tuple[int, int, int] = (17, 96, 96)  # whole clips: what the bench and inference decode
    latent_clips: int = 1000
    dit: DiTConfig = SHAPES_DIT
    t5: T5Config = SHAPES_T5
    t5_seed: int = 2
    dit_minutes: float = 40.0
    dit_steps: int | None = None
    dit_batch: int = 16
    dit_lr: float = 5e-4
    caption_dropout: float = 0.1
    shift: float = SHAPES_SHIFT
    # The sigmas the DiT trains on, [low, high] (a Wan2.2 expert's share of the timesteps); the
    # whole range by default. Drawn from the shifted distribution restricted to the range.
    sigma_range: tuple[float, float] = (0.0, 1.0)
    ema: float = 0.999
    # Continue from an exported model (the official layout, e.g. the shipped weights): its VAE and
    # text encoder are kept as they are, its DiT is the starting point of the DiT phase (with
    # dit_minutes 0 it is kept as it is, and only the decoder is fine-tuned).
    init_from: str | None = None
    # Or keep only the VAE of an exported model (no VAE phase, no decoder fine-tune) and train a new
    # text encoder's DiT from scratch on its latents.
    vae_from: str | None = None
    checkpoint_s: float = 120.0
    log_every: int = 50

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def toy_plan(**changes) -> TrainPlan:
    """A few seconds of every phase at toy size (tests)."""
    base = dict(size=(32, 32), frames=5, vae=VAEConfig(base_dim=4, num_res_blocks=1), vae_minutes=1, vae_steps=3,
                decoder_minutes=1, decoder_steps=2,
                vae_batch=2, vae_crop=(5, 16, 16), decoder_crop=(5, 32, 32), latent_clips=8,
                dit=DiTConfig(dim=32, ffn_dim=64, num_heads=4, num_layers=2, text_dim=32, text_len=16,
                              freq_dim=256), dit_minutes=1, dit_steps=4, dit_batch=4, log_every=1)
    return TrainPlan(**(base | changes))


# ------------------------------------------------------------------------------------------------
# 2. Latents and captions
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_dataset(plan: TrainPlan, vae: WanVAE, work_dir: Path, log=print) -> dict:
    """{"latents" [N, 16, f, h, w] normalized, "captions" [N] indices into all_combos()}, cached."""
    path = work_dir / "latents.ckpt"
    cached = _load(path)
    vae_key = _fingerprint(vae)
    if (cached is not None and cached["latents"].shape[0] == plan.latent_clips
            and float(cached.get("vae_key", float("nan"))) == vae_key):
        log(f"[latents] cached: {plan.latent_clips} clips")
        return cached
    start = time.perf_counter()
    index = {c: i for i, c in enumerate(all_combos())}
    latents, captions = [], []
    batch = 8
    for first in range(0, plan.latent_clips, batch):
        count = min(batch, plan.latent_clips - first)
        clips, combos = random_clips(count, plan.size, plan.frames, seed=plan.seed * 7919 + first)
        latents.append(vae.encode(clips, chunked=False))
        captions.extend(index[c] for c in combos)
        if (first // batch) % 25 == 0:
            log(f"[latents] {first + count}/{plan.latent_clips} ({time.perf_counter() - start:.0f} s)")
    data = dict(latents=torch.cat(latents), captions=torch.tensor(captions), vae_key=vae_key)
    _save(path, data)
    log(f"[latents] {plan.latent_clips} clips in {time.perf_counter() - start:.0f} s, latent std "
        f"{data['latents'].std():.3f}")
    return data


@torch.no_grad()
def _fingerprint(module: nn.Module) -> float:
    """A number that changes with any weight (cached latents belong to one VAE)."""
    return float(sum((v.double() * (i + 1)).sum() for i, v in enumerate(module.state_dict().values())))


@torch.no_grad()
def caption_table(plan: TrainPlan, text_encoder) -> torch.Tensor:
    """Embeddings `[len(all_combos()) + 1, text_len, text_dim]` of every caption, then of "" (the
    unconditional caption), zero past each one's length as the pipeline pads them."""
    captions = [c.caption for c in all_combos()] + [""]
    return text_encoder.encode_padded(captions).float()


# ------------------------------------------------------------------------------------------------
# 3. DiT
# ------------------------------------------------------------------------------------------------

def init_dit(cfg: DiTConfig, seed: int) -> WanDiT:
    """The official initialisation: Xavier-uniform linears with zero bias, N(0, 0.02) text/time
    embeddings, zero head, modulation tables N(0, 1/dim)."""
    torch.manual_seed(seed)
    dit = WanDiT(cfg)
    for module in dit.modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            nn.init.xavier_uniform_(module.weight.flatten(1) if isinstance(module, nn.Conv3d) else module.weight)
            nn.init.zeros_(module.bias)
    for seq in (dit.text_embedding, dit.time_embedding):
        for module in seq:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
    nn.init.zeros_(dit.head.head.weight)
    with torch.no_grad():
        for block in dit.blocks:
            block.modulation.normal_(0, cfg.dim ** -0.5)
        dit.head.modulation.normal_(0, cfg.dim ** -0.5)
    return dit


def flow_matching_batch(plan: TrainPlan, x0: torch.Tensor, generator: torch.Generator):
    """(x_t, timesteps, target) of the official objective for clean latents x0 [B, ...]."""
    b = x0.shape[0]
    u_low, u_high = (_unshifted(plan.shift, s) for s in plan.sigma_range)
    u = u_low + (u_high - u_low) * torch.rand(b, generator=generator)
    sigma = plan.shift * u / (1 + (plan.shift - 1) * u)
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma.view(b, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise, sigma * 1000, noise - x0


def _unshifted(shift: float, sigma: float) -> float:
    """The uniform u whose shifted sigma `shift*u / (1 + (shift-1)*u)` is `sigma` (0 -> 0, 1 -> 1)."""
    return sigma / (shift - (shift - 1) * sigma)


def train_dit(plan: TrainPlan, data: dict, table: torch.Tensor, work_dir: Path, log=print,
              start: WanDiT | None = None) -> WanDiT:
    dit = init_dit(plan.dit, plan.seed + 1)
    if start is not None:
        dit.load_state_dict(start.state_dict())
    ema = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    opt = torch.optim.AdamW(dit.parameters(), lr=plan.dit_lr, weight_decay=0.01, betas=(0.9, 0.99))
    ckpt_path = work_dir / "dit.ckpt"
    state = _load(ckpt_path)
    step, spent = 0, 0.0
    if state is not None:
        dit.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        step, spent = int(state["step"]), float(state["spent"])
        log(f"[dit] resumed at step {step} ({spent:.0f} s spent)")
    generator = torch.Generator().manual_seed(plan.seed * 1000 + 17 + step)
    clock = _Clock(plan.dit_minutes * 60, spent)
    first_step = step
    latents, captions = data["latents"], data["captions"]
    empty = table.shape[0] - 1
    running = None
    dit.train()

    def save():
        _save(ckpt_path, dict(model=dit.state_dict(), opt=opt.state_dict(), ema=ema, step=step, spent=clock.spent))

    while not clock.expired() and (plan.dit_steps is None or step < plan.dit_steps):
        idx = torch.randint(latents.shape[0], (plan.dit_batch,), generator=generator)
        drop = torch.rand(plan.dit_batch, generator=generator) < plan.caption_dropout
        context = table[torch.where(drop, torch.full_like(idx, empty), captions[idx])]
        xt, t, target = flow_matching_batch(plan, latents[idx], generator)
        for group in opt.param_groups:
            group["lr"] = _lr(step, clock.total_steps(step, step - first_step, plan.dit_steps), plan.dit_lr,
                              warmup=200)
        loss = F.mse_loss(dit(xt, t, context), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(plan.ema, (1 + step) / (10 + step))
            for k, v in dit.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % plan.log_every == 0:
            log(f"[dit] step {step} loss {loss.item():.4f} (avg {running:.4f}) lr {opt.param_groups[0]['lr']:.2e} "
                f"({clock.spent:.0f} s)")
        if clock.checkpoint_due(plan.checkpoint_s):
            save()
    save()
    log(f"[dit] done: {step} steps in {clock.spent:.0f} s")
    dit.load_state_dict(ema)
    return dit.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# Everything, and the export in the official layout
# ------------------------------------------------------------------------------------------------

@dataclass
class TrainedShapes:
    vae: WanVAE
    dit: WanDiT
    text_encoder: object
    stats: dict = field(default_factory=dict)


def train_all(plan: TrainPlan, work_dir: Path, log=print) -> TrainedShapes:
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "plan.json").write_text(json.dumps(plan.to_json(), indent=1))
    start = time.perf_counter()
    if plan.init_from is not None and plan.vae_from is not None:
        raise ValueError("init_from and vae_from exclude each other: give one exported model to start from")
    if plan.init_from is not None:
        vae, text, start_dit = _exported(plan)
        log(f"[init] VAE, text encoder and DiT from {plan.init_from}")
    elif plan.vae_from is not None:
        vae = _exported_vae(plan, plan.vae_from)
        text, start_dit = _text_encoder(plan), None
        log(f"[init] VAE from {plan.vae_from}; a new text encoder and DiT")
    else:
        vae = train_vae(plan, work_dir, log)
        stats_clips, _ = random_clips(64 if plan.latent_clips > 64 else 8, plan.size, plan.frames,
                                      seed=plan.seed + 99)
        m, s = fold_latent_stats(vae, stats_clips)
        log(f"[vae] latent stats folded: raw mean {m.abs().mean():.3f}, raw std {s.mean():.3f}")
        text, start_dit = _text_encoder(plan), None
    if plan.dit_minutes == 0:  # only the decoder phase: the exported DiT stays as it is
        if start_dit is None:
            raise ValueError("dit_minutes 0 keeps an exported DiT: give init_from")
        dit = start_dit.eval().requires_grad_(False)
        log("[dit] skipped (dit_minutes 0): the exported DiT is kept")
    else:
        data = encode_dataset(plan, vae, work_dir, log)
        dit = train_dit(plan, data, caption_table(plan, text), work_dir, log, start=start_dit)
    if plan.vae_from is None:
        vae = finetune_decoder(plan, vae, work_dir, log)
    log(f"[all] trained in {time.perf_counter() - start:.0f} s")
    return TrainedShapes(vae, dit, text, dict(seconds=time.perf_counter() - start))


def _text_encoder(plan: TrainPlan):
    """The frozen seeded tiny umT5 behind the world's word-level tokenizer (see vocabulary.py)."""
    return random_text_encoder(plan.t5, shapes_tokenizer(plan.t5.text_len), seed=plan.t5_seed)


def _exported_vae(plan: TrainPlan, root: str) -> WanVAE:
    from ..assembly import load_vae

    return load_vae(root, config=plan.vae).eval()


def _exported(plan: TrainPlan):
    """(VAE, text encoder, DiT) of the exported model at `plan.init_from` (its configs must be the plan's)."""
    from ..assembly import load_dit, load_text_encoder

    return (_exported_vae(plan, plan.init_from), load_text_encoder(plan.init_from, text_len=plan.t5.text_len),
            load_dit(plan.init_from, config=plan.dit))


def export(trained: TrainedShapes, out_dir: Path, plan: TrainPlan) -> Path:
    """The official Wan2.1 layout, readable by the normal loaders: DiT safetensors + config.json,
    Wan2.1_VAE.pth, the umT5 .pth with Wan names, and the tokenizer folder."""
    from ..loading.layout import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE
    from ..loading.t5_format import hf_to_wan_t5

    out_dir = Path(out_dir)
    write_dit(trained.dit, plan.dit, out_dir)
    torch.save({k: v.contiguous().clone() for k, v in trained.vae.state_dict().items()}, out_dir / ORIGINAL_VAE)
    wan_t5 = hf_to_wan_t5(trained.text_encoder.model.state_dict())
    torch.save({k: v.contiguous().clone() for k, v in wan_t5.items()}, out_dir / ORIGINAL_T5)
    trained.text_encoder.tokenizer.hf.save_pretrained(out_dir / ORIGINAL_TOKENIZER)
    (out_dir / "training.json").write_text(json.dumps(dict(plan=plan.to_json(), **trained.stats), indent=1))
    return out_dir


def write_dit(dit: WanDiT, d: DiTConfig, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """The DiT's safetensors (in `dtype`) and config.json, as the official releases hold them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in dit.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    config = {"_class_name": "WanModel", "dim": d.dim, "eps": d.eps, "ffn_dim": d.ffn_dim, "freq_dim": d.freq_dim,
              "in_dim": d.in_dim, "model_type": d.model_type, "num_heads": d.num_heads,
              "num_layers": d.num_layers, "out_dim": d.out_dim, "text_len": d.text_len}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
