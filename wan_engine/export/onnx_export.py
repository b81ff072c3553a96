"""`export_onnx`: the DiT or a VAE half of a pipeline as ONNX files, with a manifest.

torch.onnx's dynamo exporter over the modules of `export.modules`. The DiT becomes five graphs
(the text K/V; block 0; the rest of the stack computed or reused; the reused whole step), holding
each block's weights once, with dynamic batch (1-2) and tokens; the VAE decoder two (its first and steady
chunks) with dynamic latent rows and columns and the cache slots as inputs and outputs, and the
encoder likewise (frame 0, then 4-frame chunks; i2v/flf2v encode their conditioning video). Files
over 2 GB keep their weights as external data. The manifest is written last.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from pathlib import Path

import torch

from ..configs import VAEConfig
from ..executor.model import timestep_features
from ..loading.fingerprint import dit_fingerprint, state_fingerprint
from ..reference.vae import ENCODE_CHUNK_FRAMES
from ..vae.static import decoder_chunks, encoder_chunks
from .manifest import COMPONENTS, EXPERT_FOLDERS, Manifest, ShapeRange
from .modules import DIT_KINDS, DiTStep, TextKVStep, TimeEmbeddingStep, VAEChunk
from .versions import check_torch_for_export

OPSET = 20
EXTERNAL_DATA_BYTES = 1 << 31  # the protobuf limit: larger models keep their weights beside the graph


def _versions() -> dict:
    out = {}
    for package in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def _save(module, args, dynamic_shapes, path: Path, weight_bytes: int) -> None:
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=OPSET,
                                verbose=False)
    program.save(str(path), external_data=weight_bytes >= EXTERNAL_DATA_BYTES)


def _dim(name: str, lo: int, hi: int):
    """A dynamic axis over [lo, hi], or None (a static axis) when the range is one value."""
    return None if lo == hi else torch.export.Dim(name, min=lo, max=hi)


def _scaled(dim, factor: float):
    return None if dim is None else dim * int(factor)


def token_range(shapes: ShapeRange, vae: VAEConfig, patch=(1, 2, 2), frames=None) -> tuple[int, int]:
    """The DiT's token counts at the smallest and the largest exported video (`frames=1`: of one
    latent frame, e.g. TI2V's frame 0)."""
    def tokens(video_frames, height, width):
        lf = (video_frames - 1) // vae.temporal_stride + 1 if frames is None else frames
        return (lf // patch[0]) * (height // vae.spatial_stride // patch[1]) * (width // vae.spatial_stride // patch[2])
    return (tokens(shapes.frames[0], shapes.height[0], shapes.width[0]),
            tokens(shapes.frames[1], shapes.height[1], shapes.width[1]))


@torch.no_grad()
def export_dit(executor, vae_config: VAEConfig, out_dir: Path, shapes: ShapeRange, model_name: str,
               dtype: str, kinds: tuple[str, ...] = DIT_KINDS, features: bool = True) -> Manifest:
    """The text K/V graph, the time-embedding graph (TeaCache's signal) and one graph per step kind
    (`kinds`: `DIT_KINDS` by default). The step graphs take the timesteps as their sinusoid
    features (`features` False: as t, the layout of exports made before, kept to test that the
    runners still read those). A TI2V DiT's step graphs take t [B, 2] (latent frame 0's timestep,
    the rest's) and, after sin, a tensor whose length is frame 0's token count (its values unused):
    image-to-video runs frame 0, the conditioning image, at t = 0, and the token count is a dynamic
    dim only as a shape."""
    cfg = executor.config
    frame0 = cfg.task == "ti2v"
    lo, hi = token_range(shapes, vae_config, cfg.patch_size)
    batch = _dim("batch", shapes.batch[0], shapes.batch[1])
    tokens = _dim("tokens", max(lo, 2), max(hi, 2))
    device = next(executor.buffers()).device
    cd = executor.compute_dtype
    gen = torch.Generator().manual_seed(0)
    b, s = shapes.batch[1], max(lo, 2)  # example sizes inside the ranges (a size of 1 would be specialized)
    frame0_input, frame0_dyn = (), ()
    if frame0:
        r_lo, r_hi = token_range(shapes, vae_config, cfg.patch_size, frames=1)
        first_rows = _dim("frame0_rows", 1, r_hi) if r_lo != r_hi else None
        r = r_lo if first_rows is None else max(2, r_lo)
        if tokens is not None:
            s = min(max(hi, 2), max(s, 2 * r))  # frame 0 a part of the example video, as in any real one
        frame0_input, frame0_dyn = (torch.zeros(r, device=device),), ({0: first_rows} if first_rows else None,)
    patch_dim = cfg.in_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    patches = torch.randn(b, s, patch_dim, generator=gen).to(device)
    t = torch.tensor([700.0, 300.0][:b], device=device)
    if frame0:
        t = torch.stack([torch.zeros_like(t), t], 1)  # frame 0 at t = 0, as image-to-video runs it
    if features:
        t = timestep_features(cfg.freq_dim, t)
    cos = torch.randn(s, cfg.head_dim // 2, generator=gen).to(device)
    sin = torch.randn(s, cfg.head_dim // 2, generator=gen).to(device)
    context = torch.randn(b, cfg.text_len, cfg.text_dim, generator=gen).to(device, cd)
    # i2v/flf2v with CLIP: the CLIP features (fp32; a fixed token count per model) are a second
    # text-graph input. An i2v DiT without CLIP (Wan2.2 I2V-A14B) takes the text alone.
    clip_fea = () if not cfg.uses_clip else (torch.randn(
        b, (2 if cfg.model_type == "flf2v" else 1) * cfg.image_tokens, cfg.image_dim, generator=gen).to(device),)
    kv_tensors = TextKVStep(executor)(context, *clip_fea)  # (k, v) or (k, v, k_img, v_img)
    residual = torch.randn(b, s, cfg.dim, generator=gen).to(device)
    weight_bytes = sum(t.numel() * t.element_size() for t in executor.buffers())
    files = {"text_kv": "dit_text_kv.onnx"}
    text_dyn = ({0: batch},) + ((({0: batch},),) if clip_fea else ())  # the module's *clip_fea is one tuple
    _save(TextKVStep(executor).eval(), (context, *clip_fea), text_dyn, out_dir / files["text_kv"], weight_bytes)
    if features:  # one timestep per call: a static graph
        files["time_embedding"] = "dit_time_embedding.onnx"
        one = timestep_features(cfg.freq_dim, torch.tensor([700.0], device=device))[:, 0]  # [1, freq_dim]
        _save(TimeEmbeddingStep(executor).eval(), (one,), None, out_dir / files["time_embedding"], weight_bytes)
    rows, rope = {0: batch, 1: tokens}, {0: tokens}
    # What each kind takes before (t, cos, sin): the patches, or FBCache's stream after block 0 (and
    # its normed input to block 1, in whatever dtype block 0 forms it); the reusing kinds take the
    # stored residual after them.
    after, normed, _ = DiTStep(executor, "first_block", frame0)(patches, t, cos, sin, *frame0_input, *kv_tensors)
    leads = {"rest_residual": (after, normed), "rest_reuse": (after,)}
    for kind in kinds:
        lead = leads.get(kind, (patches,))
        stored = (residual,) if kind in ("reuse", "rest_reuse") else ()
        args = lead + (t, cos, sin) + frame0_input + stored + kv_tensors
        dyn = ((rows,) * len(lead) + ({0: batch}, rope, rope) + frame0_dyn + (rows,) * len(stored)
               + ({1: batch},) * len(kv_tensors),)  # the module's *inputs is one tuple
        files[kind] = f"dit_{kind}.onnx"
        _save(DiTStep(executor, kind, frame0).eval(), args, dyn, out_dir / files[kind], weight_bytes)
    return Manifest(model_name, "dit", "onnx", dtype, shapes, dataclasses.asdict(cfg), files, OPSET, _versions(),
                    frame0_timestep=frame0, timestep_features=features)


@torch.no_grad()
def _export_vae_chunks(vae, chunks, component: str, out_dir: Path, shapes: ShapeRange, model_name: str, *,
                       channels: int, steady_frames: int, unit: int) -> Manifest:
    """The first and steady chunk graphs of one VAE half. `unit`: the chunk's side per latent row (1
    for the decoder's latent input, the spatial stride for the encoder's pixels); the input's and
    every cache slot's sides are dynamic as multiples of the latent rows and columns, so the
    TensorRT profiles read them alike."""
    s = vae.config.spatial_stride
    h_lo, h_hi = shapes.height[0] // s, shapes.height[1] // s
    w_lo, w_hi = shapes.width[0] // s, shapes.width[1] // s
    rows = _dim("latent_rows", max(h_lo, 2), max(h_hi, 2))
    cols = _dim("latent_cols", max(w_lo, 2), max(w_hi, 2))
    device = next(vae.parameters()).device
    h, w = max(h_lo, 2) * unit, max(w_lo, 2) * unit
    slots = chunks.slots(1, h, w, torch.float32, device)
    dyn = ({3: _scaled(rows, unit), 4: _scaled(cols, unit)},
           tuple({3: _scaled(rows, unit * sp.scale_h), 4: _scaled(cols, unit * sp.scale_w)} for sp in chunks.specs))
    weight_bytes = sum(p.numel() * p.element_size() for p in chunks.module.parameters())
    gen = torch.Generator().manual_seed(1)
    files = {}
    for role, frames in (("first", 1), ("steady", steady_frames)):
        x = torch.randn(1, channels, frames, h, w, generator=gen).to(device)
        files[role] = f"{component.replace('-', '_')}_{role}.onnx"
        _save(VAEChunk(chunks, role == "first").eval(), (x, *slots), dyn, out_dir / files[role], weight_bytes)
    return Manifest(model_name, component, "onnx", "fp32", shapes, dataclasses.asdict(vae.config), files, OPSET,
                    _versions())


def export_vae_decoder(vae, out_dir: Path, shapes: ShapeRange, model_name: str) -> Manifest:
    """The decoder's chunks: one latent frame (after conv2) in, 1 (first) or 4 (steady) frames out."""
    return _export_vae_chunks(vae, decoder_chunks(vae), "vae-decoder", out_dir, shapes, model_name,
                              channels=vae.config.z_dim, steady_frames=1, unit=1)


def export_vae_encoder(vae, out_dir: Path, shapes: ShapeRange, model_name: str) -> Manifest:
    """The encoder's chunks: frame 0 (first) or 4 frames (steady) in, one latent frame's features out."""
    return _export_vae_chunks(vae, encoder_chunks(vae), "vae-encoder", out_dir, shapes, model_name,
                              channels=3, steady_frames=ENCODE_CHUNK_FRAMES, unit=vae.config.spatial_stride)


def lora_records(reports) -> tuple[dict, ...]:
    """What a manifest records of the LoRAs merged into an exported DiT: each file's name, strength
    and SHA-256 (its weights are in the graphs; this says which)."""
    records = []
    for report in reports:
        digest = hashlib.sha256()
        with open(report.spec.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        records.append({"file": Path(report.spec.path).name, "strength": report.spec.strength,
                        "sha256": digest.hexdigest()})
    return tuple(records)


def _dits(pipe) -> list[tuple[str | None, object, tuple]]:
    """(expert or None, DiT, the LoRA reports merged into it) of each DiT the pipeline runs."""
    from ..executor import WanExecutor

    low = getattr(pipe, "low_noise_dit", None)
    dits = [(None, pipe.dit)] if low is None else list(zip(EXPERT_FOLDERS, (pipe.dit, low)))
    if not all(isinstance(dit, WanExecutor) for _, dit in dits):
        raise ValueError("the DiT export needs the executor engine (its fixed-shape core is what is exported)")
    lora = pipe.lora
    return [(name, dit, lora.reports if name is None else lora.mergers[name].reports) for name, dit in dits]


def export_onnx(pipe, component: str, out_dir: str | Path, shapes: ShapeRange | None = None,
                kinds: tuple[str, ...] = DIT_KINDS) -> list[tuple[Path, Manifest]]:
    """Export `component` ("dit", "vae-decoder" or "vae-encoder") of a built pipeline into `out_dir`:
    the folders written, each with its manifest. A two-expert model's DiT is two complete exports,
    `out_dir/high_noise` and `out_dir/low_noise`; everything else is `out_dir` itself. `kinds`: the
    DiT's step graphs (`DIT_KINDS`, what every step cache runs; ("full",) runs uncached only)."""
    check_torch_for_export(torch.__version__)
    shapes = ShapeRange() if shapes is None else shapes
    if component not in COMPONENTS:
        raise ValueError(f"component must be dit, vae-decoder or vae-encoder; got {component!r}")
    if component == "dit":
        dits = _dits(pipe)  # refused before any folder is made
    out_dir = Path(out_dir).expanduser()
    written = []
    if component == "dit":
        for expert, dit, reports in dits:
            folder = out_dir if expert is None else out_dir / expert
            folder.mkdir(parents=True, exist_ok=True)
            dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dit.compute_dtype]
            manifest = export_dit(dit, pipe.config.vae, folder, shapes, pipe.config.name, dtype, kinds)
            source = pipe.dit_folders.get(expert)  # None: seeded random weights
            weights = None if source is None else dit_fingerprint(source)
            written.append((folder, dataclasses.replace(manifest, expert=expert, loras=lora_records(reports),
                                                        weights=weights)))
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        export_vae = export_vae_decoder if component == "vae-decoder" else export_vae_encoder
        manifest = export_vae(pipe.vae, out_dir, shapes, pipe.config.name)
        written.append((out_dir, dataclasses.replace(manifest, weights=state_fingerprint(pipe.vae.state_dict()))))
    for folder, manifest in written:
        manifest.save(folder)  # last, each: a folder without its manifest is an unfinished export
    return written
