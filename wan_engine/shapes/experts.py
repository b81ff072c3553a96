"""The `shapes-a14b` model: the trained `shapes` DiT split into Wan2.2-style experts.

Wan2.2 A14B denoises with two DiTs of one architecture: the high-noise expert runs the steps whose
timestep is at or above `boundary` x 1000, the low-noise expert the rest. Here each expert starts
from the shipped `shapes` DiT and is fine-tuned on its own share of the sigmas only (the same
objective, the shifted sigma distribution restricted to [boundary, 1] or [0, boundary)), so the
two diverge the way specialised experts do and the switch between them is a real discontinuity.
The VAE and the text encoder are the shipped ones, unchanged (one latent space for both experts).

Its purpose is to measure what needs a trained two-expert model: the step caches' quality across
the switch (MagCache's per-expert rule) against the uncached video and the adherence score.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ..loading.layout import ORIGINAL_EXPERTS, ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE
from .train import TrainPlan, _exported, caption_table, encode_dataset, train_dit, write_dit


def expert_plans(plan: TrainPlan, boundary: float) -> dict[str, TrainPlan]:
    """{folder name: the plan of that expert}: high noise on sigmas [boundary, 1], low noise below."""
    if not 0.0 < boundary < 1.0:
        raise ValueError(f"boundary must be in (0, 1), got {boundary!r}")
    high, low = ORIGINAL_EXPERTS
    return {high: dataclasses.replace(plan, sigma_range=(boundary, 1.0)),
            low: dataclasses.replace(plan, sigma_range=(0.0, boundary))}


def train_experts(plan: TrainPlan, boundary: float, work_dir: Path, log=print):
    """{folder name: expert DiT} from the exported model at `plan.init_from`.
    Resumable: the latents are cached in `work_dir`, each expert checkpoints in its own subfolder."""
    if plan.init_from is None:
        raise ValueError("the experts start from an exported one-DiT model: give init_from")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    vae, text, start = _exported(plan)
    data = encode_dataset(plan, vae, work_dir, log)
    table = caption_table(plan, text)
    experts = {}
    for name, expert_plan in expert_plans(plan, boundary).items():
        (work_dir / name).mkdir(exist_ok=True)
        log(f"[{name}] sigmas {expert_plan.sigma_range}")
        experts[name] = train_dit(expert_plan, data, table, work_dir / name,
                                  lambda m, name=name: log(f"[{name}] {m}"), start=start)
    return experts


def export_experts(experts: dict, out_dir: Path, plan: TrainPlan, boundary: float,
                   dtype: torch.dtype = torch.bfloat16, stats: dict | None = None) -> Path:
    """The Wan2.2 A14B original layout: high_noise_model/ and low_noise_model/ (each a DiT in `dtype`,
    bf16 as the official A14B release ships them) beside the VAE, umT5 and tokenizer files of
    `plan.init_from`, copied byte for byte (the experts were trained on their latent space)."""
    out_dir = Path(out_dir)
    for name, dit in experts.items():
        write_dit(dit, plan.dit, out_dir / name, dtype)
    source = Path(plan.init_from)
    for name in (ORIGINAL_VAE, ORIGINAL_T5):
        shutil.copyfile(source / name, out_dir / name)
    shutil.copytree(source / ORIGINAL_TOKENIZER, out_dir / ORIGINAL_TOKENIZER, dirs_exist_ok=True)
    record = dict(plan=plan.to_json(), boundary=boundary, dtype=str(dtype).removeprefix("torch."),
                  experts={name: list(p.sigma_range) for name, p in expert_plans(plan, boundary).items()},
                  **(stats or {}))
    (out_dir / "training.json").write_text(json.dumps(record, indent=1))
    return out_dir
