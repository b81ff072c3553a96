"""fp8 weights: per-layer and per-forward error at Wan2.1 1.3B and 14B layer shapes (random weights).

Per layer: each block GEMM shape of the model, x [tokens, in] ~ N(0, 1) and W ~ N(0, 1/in), the
relative L2 error against float64 of the bf16 GEMM and of the fp8 GEMM (`fp8-emulated`: the
numerics `torch._scaled_mm` computes, see wan_engine/executor/fp8.py). Per forward: one block
at full width (a few tokens, random weights), the executor in bf16 against fp32, dense and with fp8
block weights, with the weight bytes of the whole DiT (`weights_mib`) and of its block GEMMs, read
from the executor's buffers. On CUDA with sm_89+ a row times the real fp8 GEMM.
"""
from __future__ import annotations

import dataclasses

import torch

from wan_engine.configs import SHAPES_PRESETS, get_preset
from wan_engine.executor import build_executor
from wan_engine.executor.fp8 import QUANTIZED, fp8_linear_emulated, quantize_rows, weight_bytes
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import WanDiT

from .common import BenchContext, SuiteResult

TOKENS = 256
FORWARD_FHW = (1, 8, 8)  # 16 tokens per forward: the error, not the speed, is measured here


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def layer_rows(preset: str) -> list[dict]:
    cfg = get_preset(preset).dit
    d, f = cfg.dim, cfg.ffn_dim
    shapes = {"qkv": (d, 3 * d), "o": (d, d), "cross_q": (d, d), "cross_o": (d, d), "ffn1": (d, f), "ffn2": (f, d)}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (k, n) in shapes.items():
        x = torch.randn(TOKENS, k, generator=gen)
        w = torch.randn(n, k, generator=gen) / k ** 0.5
        b = torch.randn(n, generator=gen) * 0.1
        exact = x.double() @ w.double().t() + b.double()
        bf16 = torch.nn.functional.linear(x.bfloat16(), w.bfloat16(), b.bfloat16())
        wq, ws = quantize_rows(w)
        fp8 = fp8_linear_emulated(x.bfloat16(), wq, b.bfloat16(), ws)
        for impl, out in (("bf16", bf16), ("fp8-emulated", fp8)):
            rows.append(dict(suite="fp8", case=f"{preset} layer {name}", impl=impl, shape=f"{TOKENS}x{k}x{n}",
                             dtype=impl, device="cpu", rel_l2=_rel(out, exact), oracle="fp64"))
    return rows


def dit_weight_bytes(executor, num_layers: int) -> dict[str, int]:
    """Bytes of a DiT executor's weights as its buffers hold them (fp8 values and fp32 scales once
    quantized): "gemm", the six quantizable block GEMM weights with their scales, and "model", every
    weight. The executor may hold fewer layers than `num_layers` (the suite builds one full-width
    block: a 14B model does not fit a CPU run); every layer holds the same tensors, so the first
    layer's measured bytes stand for each missing one."""
    built = len(executor.blocks)
    gemm_names = {*QUANTIZED, *QUANTIZED.values()}
    gemm = sum(t.numel() * t.element_size() for name, t in executor.blocks[0].named_buffers() if name in gemm_names)
    modulation = executor.globals.modulation  # every layer's modulation, stacked [layers, 6, dim] in the globals
    layer = (weight_bytes(executor.blocks[0]) + weight_bytes(executor.contexts[0])
             + modulation.numel() * modulation.element_size() // built)
    return dict(gemm=num_layers * gemm, model=weight_bytes(executor) + (num_layers - built) * layer)


def forward_rows(preset: str, device: torch.device) -> list[dict]:
    layers = get_preset(preset).dit.num_layers
    cfg = dataclasses.replace(get_preset(preset).dit, num_layers=1)
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state_dict(dit, 0))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, *FORWARD_FHW, generator=gen)
    t, ctx = torch.tensor([700.0]), torch.randn(1, 32, cfg.text_dim, generator=gen)
    exact = build_executor(dit)(x, t, ctx)
    rows = []
    modes = [("bf16", None), ("bf16 + fp8-emulated", "fp8-emulated")]
    for impl, quant in modes:
        ex = build_executor(dit, dataclasses.replace(build_executor(dit).engine_config, dtype=torch.bfloat16))
        if quant is not None:
            ex.quantize_weights(quant)
        out = ex(x, t, ctx)
        weights = dit_weight_bytes(ex, layers)
        rows.append(dict(suite="fp8", case=f"{preset} forward (1 block)", impl=impl, shape="x".join(map(str, FORWARD_FHW)),
                         dtype="bf16", device="cpu", rel_l2=_rel(out, exact), oracle="fp32 executor",
                         weights_mib=weights["model"] / 2**20, gemm_weights_mib=weights["gemm"] / 2**20,
                         note=f"DiT weights {weights['model'] / 2**20:.1f} MiB ({layers} layers), block GEMMs "
                              f"{weights['gemm'] / 2**20:.1f} MiB; one block {weight_bytes(ex.blocks) / 2**20:.1f} MiB"))
    return rows


SHAPES_PROMPTS = 8  # held-out prompts (one seed each) for the trained-model rows


def shapes_rows(ctx: BenchContext) -> list[dict]:
    """A trained shapes model (`shapes`, or the two experts of `shapes-a14b`) in bf16, dense and with
    fp8 block weights (`fp8-emulated` on the CPU, the real GEMM where the GPU has it): PSNR/SSIM of
    the fp8 videos against the bf16 ones and the adherence score of each, on the same held-out
    prompts and seeds."""
    import numpy as np

    from wan_engine.pipelines.t2v import WanPipeline
    from wan_engine.shapes.world import HELD_OUT

    from ..accuracy import compare_frames
    from ..adherence import accuracy, read_clip, score

    quant = "fp8" if ctx.device.type == "cuda" and torch.cuda.get_device_capability(ctx.device) >= (8, 9) \
        else "fp8-emulated"
    combos = HELD_OUT[:SHAPES_PROMPTS]
    videos, scores = {}, {}
    for name, q in (("bf16", None), (quant, quant)):
        pipe = WanPipeline.from_pretrained(ctx.preset, device=ctx.device, dtype="bf16", quant=q)
        videos[name] = [pipe.generate(c.caption, seed=0) for c in combos]
        scores[name] = accuracy([score(read_clip(v), c) for v, c in zip(videos[name], combos)])
    quality = compare_frames(np.concatenate(videos[quant]), np.concatenate(videos["bf16"]))
    rows = []
    for name in ("bf16", quant):
        acc = scores[name]
        rows.append(dict(suite="fp8", case=f"{ctx.preset} video", impl=name, dtype="bf16", device=ctx.device.type,
                         shape=f"{SHAPES_PROMPTS} held-out prompts, preset defaults",
                         oracle="bf16 videos" if name != "bf16" else None,
                         **(quality if name != "bf16" else {}),
                         note="adherence " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items())))
    return rows


def run(ctx: BenchContext) -> SuiteResult:
    rows = []
    notes = ["fp8: per-output-channel weight scales, per-token activation scales (e4m3fn); errors vs float64 "
             "(layers) and the fp32 executor (forward); random weights, so no quality claim about a trained model"]
    for preset in ("t2v-1.3B", "t2v-14B"):
        forward = forward_rows(preset, ctx.device)
        rows += layer_rows(preset) + forward
        dense, fp8 = forward
        notes.append(f"{preset} DiT weights (the executor's buffers): bf16 {dense['weights_mib']:.0f} MiB -> fp8 "
                     f"{fp8['weights_mib']:.0f} MiB; block GEMMs {dense['gemm_weights_mib']:.0f} -> "
                     f"{fp8['gemm_weights_mib']:.0f} MiB")
    if ctx.preset in SHAPES_PRESETS:
        rows += shapes_rows(ctx)
    else:
        notes.append("fp8 on a trained model (PSNR and adherence against bf16): `--suite fp8 --model shapes` "
                     "(or shapes-a14b)")
    return SuiteResult(rows=rows, notes=notes)
