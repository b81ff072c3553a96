"""The VAE phases of the `shapes` training: train on crops, fold the latent statistics, fine-tune the
decoder alone. `plan` is a `wan_engine.shapes.train.TrainPlan` (not imported here: train imports this)."""
from __future__ import annotations

import math
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn

from ..configs import WAN21_LATENT_MEAN, WAN21_LATENT_STD, VAEConfig
from ..reference.vae import WanVAE
from ..reference.vae_blocks import AttentionBlock, ResidualBlock, Resample
from .checkpoints import _Clock, _load, _lr, _save
from .world import render, sample_spec, training_combos

# ------------------------------------------------------------------------------------------------
# 1. VAE
# ------------------------------------------------------------------------------------------------

def vae_crops(plan, generator: torch.Generator, batch: int | None = None,
              crop: tuple[int, int, int] | None = None) -> torch.Tensor:
    """A batch of random crops `[B, 3, f, h, w]` of fresh clips (default: the VAE phase's batch and
    crop), centred near the shape (so that most crops hold an edge, not only background)."""
    frames, ch, cw = plan.vae_crop if crop is None else crop
    width, height = plan.size
    combos = training_combos()
    crops = []
    for _ in range(plan.vae_batch if batch is None else batch):
        combo = combos[int(torch.randint(len(combos), (1,), generator=generator))]
        spec = sample_spec(combo, plan.size, plan.frames, generator)
        clip = render(spec, plan.size, plan.frames)
        f0 = int(torch.randint(plan.frames - frames + 1, (1,), generator=generator))
        jitter = (torch.rand(2, generator=generator) - 0.5) * 2 * torch.tensor([cw, ch]) * 0.6
        cx, cy = spec.center[0] + float(jitter[0]), spec.center[1] + float(jitter[1])
        x0 = int(min(max(cx - cw / 2, 0), width - cw))
        y0 = int(min(max(cy - ch / 2, 0), height - ch))
        crops.append(clip[:, f0:f0 + frames, y0:y0 + ch, x0:x0 + cw])
    return torch.stack(crops)


@torch.no_grad()
def init_vae(cfg: VAEConfig, seed: int) -> WanVAE:
    """PyTorch's default initialisation plus the official one where it differs (the attention
    output projection starts at zero; the temporal resampling convs start as frame copies), and
    each residual branch's last convolution at zero, so that every block starts as its shortcut.
    Without the last, the decoder's output barely depends on its input at first and training on
    the CPU stalls near the all-zero reconstruction for hundreds of steps (measured)."""
    torch.manual_seed(seed)
    vae = WanVAE(cfg)
    for module in vae.modules():
        if isinstance(module, AttentionBlock):
            nn.init.zeros_(module.proj.weight)
        elif isinstance(module, ResidualBlock):
            nn.init.zeros_(module.residual[6].weight)
            nn.init.zeros_(module.residual[6].bias)
        elif isinstance(module, Resample) and hasattr(module, "time_conv"):
            weight = module.time_conv.weight  # [out, in, 3, 1, 1]
            weight.zero_()
            out_ch, in_ch = weight.shape[:2]
            if out_ch == in_ch:  # downsampling: the middle tap copies the frame
                weight[:, :, 1, 0, 0] = torch.eye(out_ch)
            else:  # upsampling to 2x channels: both halves copy the newest frame
                half = torch.eye(out_ch // 2, in_ch)
                weight[: out_ch // 2, :, -1, 0, 0] = half
                weight[out_ch // 2:, :, -1, 0, 0] = half
            module.time_conv.bias.zero_()
    return vae


def train_vae(plan, work_dir: Path, log=print) -> WanVAE:
    vae = init_vae(plan.vae, plan.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    ckpt_path = work_dir / "vae.ckpt"
    state = _load(ckpt_path)
    step, spent = 0, 0.0
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, spent = int(state["step"]), float(state["spent"])
        log(f"[vae] resumed at step {step} ({spent:.0f} s spent)")
    generator = torch.Generator().manual_seed(plan.seed * 1000 + step)
    clock = _Clock(plan.vae_minutes * 60, spent)
    first_step = step
    running = None
    vae.train()
    while not clock.expired() and (plan.vae_steps is None or step < plan.vae_steps):
        x = vae_crops(plan, generator)
        for group in opt.param_groups:
            group["lr"] = _lr(step, clock.total_steps(step, step - first_step, plan.vae_steps), plan.vae_lr)
        mu = vae.encode_mean(x, chunked=False)
        rec = vae.decode_raw(mu, chunked=False)
        # The latent penalty keeps the posterior mean at unit scale for the diffusion model.
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + 1e-4 * mu.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        mse = F.mse_loss(rec.detach().clamp(-1, 1), x).item()
        running = mse if running is None else 0.95 * running + 0.05 * mse
        if step % plan.log_every == 0:
            psnr = 10 * math.log10(4 / max(running, 1e-12))  # range [-1, 1]: peak-to-peak 2
            log(f"[vae] step {step} loss {loss.item():.5f} crop PSNR ~{psnr:.1f} dB ({clock.spent:.0f} s)")
        if clock.checkpoint_due(plan.checkpoint_s):
            _save(ckpt_path, dict(model=vae.state_dict(), opt=opt.state_dict(), step=step, spent=clock.spent))
    _save(ckpt_path, dict(model=vae.state_dict(), opt=opt.state_dict(), step=step, spent=clock.spent))
    log(f"[vae] done: {step} steps in {clock.spent:.0f} s")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def fold_latent_stats(vae: WanVAE, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale the VAE so that its posterior mean has the official Wan2.1 per-channel mean/std
    (M, S) on `clips`: conv1's mean half maps mu -> (mu - m) * S/s + M, and conv2 first undoes
    it. Encode-decode is unchanged (exactly, up to rounding). Returns the measured (m, s)."""
    z = vae.config.z_dim
    mu = torch.cat([vae.encode_mean(c[None], chunked=False) for c in clips])
    m = mu.mean(dim=(0, 2, 3, 4)).double()
    s = mu.std(dim=(0, 2, 3, 4)).double().clamp_min(1e-6)
    big_m = torch.tensor(WAN21_LATENT_MEAN[:z], dtype=torch.float64)
    big_s = torch.tensor(WAN21_LATENT_STD[:z], dtype=torch.float64)
    scale = big_s / s  # mu' = (mu - m) * scale + M
    conv1, conv2 = vae.conv1, vae.conv2
    w1, b1 = conv1.weight.double(), conv1.bias.double()
    w1[:z] *= scale.view(-1, 1, 1, 1, 1)
    b1[:z] = (b1[:z] - m) * scale + big_m
    conv1.weight.copy_(w1.float())
    conv1.bias.copy_(b1.float())
    # conv2(mu) = W2 mu + b2 with mu = (mu' - M) / scale + m.
    w2, b2 = conv2.weight.double(), conv2.bias.double()
    inv = 1 / scale
    b2 = b2 + (w2[:, :, 0, 0, 0] @ (m - big_m * inv))
    w2 = w2 * inv.view(1, -1, 1, 1, 1)
    conv2.weight.copy_(w2.float())
    conv2.bias.copy_(b2.float())
    return m.float(), s.float()


def finetune_decoder(plan, vae: WanVAE, work_dir: Path, log=print) -> WanVAE:
    """Train the decoder (and conv2) alone on fresh clips with the encoder frozen: the latents
    the DiT was trained on do not change, the reconstruction improves (as SD's ft-MSE decoder).
    It sees whole clips (`plan.decoder_crop`), as inference decodes them, at a peak learning rate
    below the VAE phase's final one: a fresh optimizer at the VAE's own rate first knocks the
    weights out of their minimum (measured: 29.4 dB fell to 27.8 dB in 8 minutes at 1e-4)."""
    params = [*vae.decoder.parameters(), *vae.conv2.parameters()]
    opt = torch.optim.AdamW(params, lr=plan.decoder_lr, weight_decay=0.0)
    ckpt_path = work_dir / "decoder.ckpt"
    state = _load(ckpt_path)
    step, spent = 0, 0.0
    if state is not None:
        vae.decoder.load_state_dict(state["decoder"])
        vae.conv2.load_state_dict(state["conv2"])
        opt.load_state_dict(state["opt"])
        step, spent = int(state["step"]), float(state["spent"])
        log(f"[decoder] resumed at step {step} ({spent:.0f} s spent)")
    generator = torch.Generator().manual_seed(plan.seed * 1000 + 29 + step)
    clock = _Clock(plan.decoder_minutes * 60, spent)
    first_step = step
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()

    def save():
        _save(ckpt_path, dict(decoder=vae.decoder.state_dict(), conv2=vae.conv2.state_dict(), opt=opt.state_dict(),
                              step=step, spent=clock.spent))

    running = None
    while not clock.expired() and (plan.decoder_steps is None or step < plan.decoder_steps):
        x = vae_crops(plan, generator, plan.decoder_batch, plan.decoder_crop)
        for group in opt.param_groups:
            group["lr"] = _lr(step, clock.total_steps(step, step - first_step, plan.decoder_steps), plan.decoder_lr,
                              warmup=20)
        with torch.no_grad():
            mu = vae.encode_mean(x, chunked=False)
        rec = vae.decode_raw(mu, chunked=False)
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        mse = F.mse_loss(rec.detach().clamp(-1, 1), x).item()
        running = mse if running is None else 0.95 * running + 0.05 * mse
        if step % plan.log_every == 0:
            log(f"[decoder] step {step} crop PSNR ~{10 * math.log10(4 / max(running, 1e-12)):.1f} dB "
                f"({clock.spent:.0f} s)")
        if clock.checkpoint_due(plan.checkpoint_s):
            save()
    save()
    log(f"[decoder] done: {step} steps in {clock.spent:.0f} s")
    return vae.eval().requires_grad_(False)
