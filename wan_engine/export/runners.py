"""What every exported runtime shares: the DiT behind the executor's runner interface and the VAE
decoder's and encoder's chunk loops, over graphs that a runtime (onnxruntime, TensorRT) runs.

A runtime supplies `run_graph(path) -> callable(*torch tensors) -> tuple of torch tensors`; the
classes here read the manifest (refusing a folder exported for another model, format or shapes),
and provide `prepare_text`, `predict`, `step_functions` (for static step caches), the decode and
the encode.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from ..configs import latent_strides
from ..engine_config import EngineConfig
from ..executor.model import timestep_features
from ..executor.rope_cache import RopeCache, RopeTable
from ..executor.steps import text_tensors
from ..executor.text_cache import TextKV
from ..executor.token_io import TokenIO
from ..reference.dit import image_features, pad_context
from .manifest import Manifest

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ExportedSteps:
    """The whole-step functions of an exported DiT (the same signatures as `StepFunctions`).
    Timesteps enter as their fp32 sinusoid features of `freq_dim` columns, computed here in float64
    (`freq_dim` None: an export from before, whose graphs take t in fp32). A whole computed step is
    block 0 then the rest (two graphs that hold each block's weights once); an export made before
    the split step has "full" and "full_residual" graphs instead, which run when present.

    `frame0_rows` (a TI2V export's): latent frame 0's token count, which its graphs take as the
    length of an input after sin, with t as [B, 2] (frame 0's timestep, the rest's); a one-timestep
    t [B] (text-to-video) runs as both, which is the same math."""

    def __init__(self, graphs: dict[str, Callable], frame0_rows: int | None = None, freq_dim: int | None = None):
        self.graphs, self.frame0_rows, self.freq_dim = graphs, frame0_rows, freq_dim

    def key(self, kind, patches, text):
        return kind

    def _run(self, kind, lead, t, cos, sin, rest):
        extra = ()
        if self.frame0_rows is not None:
            t = torch.stack([t, t], 1) if t.ndim == 1 else t
            extra = (torch.zeros(self.frame0_rows, device=cos.device),)
        t = t.float() if self.freq_dim is None else timestep_features(self.freq_dim, t)
        return self.graphs[kind](*lead, t, cos, sin, *extra, *rest)

    def full(self, patches, t, cos, sin, *kv):
        if "full" in self.graphs:
            return self._run("full", (patches,), t, cos, sin, kv)[0]
        after, normed, _ = self.first_block(patches, t, cos, sin, *kv)
        return self.rest_with_residual(after, normed, t, cos, sin, *kv)[0]

    def full_with_residual(self, patches, t, cos, sin, *kv):
        if "full_residual" in self.graphs:
            return self._run("full_residual", (patches,), t, cos, sin, kv)
        after, normed, first = self.first_block(patches, t, cos, sin, *kv)
        out, rest = self.rest_with_residual(after, normed, t, cos, sin, *kv)
        return out, first + rest  # the whole stack's: block 0's plus the rest's (fp32 rounding apart)

    def reuse(self, patches, t, cos, sin, residual, *kv):
        return self._run("reuse", (patches,), t, cos, sin, (residual, *kv))[0]

    def first_block(self, patches, t, cos, sin, *kv):
        if "first_block" not in self.graphs:
            raise ValueError("this DiT export has no first-block graphs (it predates them: export it again)")
        return self._run("first_block", (patches,), t, cos, sin, kv)

    def rest_with_residual(self, x, normed, t, cos, sin, *kv):
        return self._run("rest_residual", (x, normed), t, cos, sin, kv)

    def rest_reuse(self, x, t, cos, sin, residual, *kv):
        return self._run("rest_reuse", (x,), t, cos, sin, (residual, *kv))[0]


def _load(folder, fmt: str, component: str, config: dict, expert: str | None = None) -> tuple[Path, Manifest]:
    folder = Path(folder).expanduser()
    manifest = Manifest.load(folder)
    if manifest.format != fmt:
        raise ValueError(f"{folder} holds a {manifest.format} export; this engine runs {fmt} exports "
                         f"(wan-engine export --format {fmt})")
    manifest.check(component=component, config=config, where=f"export {folder}", expert=expert)
    return folder, manifest


class ExportedDiT(TokenIO):
    """The exported DiT of `folder` for a model whose DiT config is `config` (refused otherwise);
    `expert`: which DiT of a two-expert model it must be ("high_noise", "low_noise"; None: one DiT)."""

    def __init__(self, folder, config, fmt: str, run_graph: Callable[[Path], Callable], expert: str | None = None):
        self.folder, self.manifest = _load(folder, fmt, "dit", dataclasses.asdict(config), expert)
        self.config = config
        self.engine_config = EngineConfig()
        self.compute_dtype = TORCH_DTYPES[self.manifest.dtype]
        self.shard_plan = None
        self.rope_cache = RopeCache(config.head_dim)
        self.graphs = {role: run_graph(self.folder / name) for role, name in self.manifest.files.items()}
        self.freq_dim = config.freq_dim if self.manifest.timestep_features else None
        self.steps = ExportedSteps(self.graphs, freq_dim=self.freq_dim)
        self.has_first_block_steps = "first_block" in self.graphs  # FBCache runs on this export
        self.has_time_embedding = "time_embedding" in self.graphs  # TeaCache runs on this export
        # TI2V image-to-video (frame 0 at its own timestep): exports made before it take t [B] only.
        self.frame0_timestep = self.manifest.frame0_timestep

    def prepare_text(self, context: torch.Tensor, clip_fea=None) -> TextKV:
        context = pad_context(context, self.config.text_len).to(self.compute_dtype)
        clip_fea = image_features(clip_fea, self.config, context.shape[0])  # None for t2v; refuses a mismatch
        return TextKV(*self.graphs["text_kv"](context, *(() if clip_fea is None else (clip_fea.float(),))))

    def step_functions(self, rope: RopeTable, text: TextKV) -> ExportedSteps:
        if self.frame0_timestep:
            return ExportedSteps(self.graphs, rope.grid[1] * rope.grid[2], self.freq_dim)
        return self.steps

    def time_embedding(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e [N, dim] and e0 [N, 6, dim] of timesteps t [N], as the executor's (TeaCache's signal)."""
        if not self.has_time_embedding:
            raise ValueError(f"export {self.folder} has no time-embedding graph, which teacache measures its signal "
                             f"on: it predates it; export it again (or use magcache or fbcache)")
        features = timestep_features(self.config.freq_dim, t.reshape(-1))
        outs = [self.graphs["time_embedding"](row) for row in features]  # row: [1, freq_dim]
        return torch.cat([e for e, _ in outs]), torch.cat([e0 for _, e0 in outs])

    def tokens_in(self, x, t, seq_len=None, y=None):
        if seq_len is not None:
            raise ValueError("the exported DiT runs unpadded token sequences (seq_len must be None)")
        if t.ndim != 1 and not self.frame0_timestep:
            raise ValueError(f"export {self.folder} takes one timestep per sample, not frame 0's own (TI2V "
                             f"image-to-video); it predates that: export it again")
        b, _, f, h, w = x.shape
        ts, s = latent_strides(self.config.out_dim)
        self.manifest.shapes.check(b, ts * (f - 1) + 1, s * h, s * w, f"export {self.folder}")
        return super().tokens_in(x, t, None, y)

    def predict(self, x, t, text: TextKV, seq_len=None, y=None) -> torch.Tensor:
        patches, rope = self.tokens_in(x, t, seq_len, y)
        steps = self.step_functions(rope, text)
        return self.tokens_out(steps.full(patches, t, rope.cos, rope.sin, *text_tensors(text)), rope)


class _ExportedVAEChunks:
    """The exported first and steady chunks of one VAE half in `folder`, for `vae` (its config is
    checked against the manifest's)."""

    component: str

    def __init__(self, folder, vae, fmt: str, run_graph: Callable[[Path], Callable]):
        from ..vae import static

        self.folder, self.manifest = _load(folder, fmt, self.component, dataclasses.asdict(vae.config))
        chunks_of = static.decoder_chunks if self.component == "vae-decoder" else static.encoder_chunks
        self.vae, self.chunks = vae, chunks_of(vae)
        self.first = run_graph(self.folder / self.manifest.files["first"])
        self.steady = run_graph(self.folder / self.manifest.files["steady"])


class ExportedVAEDecoder(_ExportedVAEChunks):
    """`decode(latents)` through the exported decoder chunks (the normalization and the per-pixel
    conv2 run in torch)."""

    component = "vae-decoder"

    def describe(self) -> str:
        """For a run's summary, as `VAEDecoder.describe`."""
        return f"{self.manifest.format} export {self.folder} ({self.manifest.dtype}, untiled)"

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, graphs=None) -> torch.Tensor:
        vae = self.vae
        b, _, f, h, w = latents.shape
        ts, s = vae.config.temporal_stride, vae.config.spatial_stride
        self.manifest.shapes.check(b, ts * (f - 1) + 1, s * h, s * w, f"export {self.folder}")
        x = vae.conv2(vae.denormalize_latents(latents))
        slots = self.chunks.slots(b, h, w, torch.float32, x.device)
        out, *slots = self.first(x[:, :, :1], *slots)
        frames = [out]
        for i in range(1, f):
            out, *slots = self.steady(x[:, :, i:i + 1], *slots)
            frames.append(out)
        return torch.cat(frames, dim=2).clamp(-1.0, 1.0)


class ExportedVAEEncoder(_ExportedVAEChunks):
    """`encode(video)` through the exported encoder chunks (the per-pixel conv1 and the latent
    normalization run in torch)."""

    component = "vae-encoder"

    @torch.no_grad()
    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, 4n+1, H, W] in [-1, 1] -> normalized latents, as `vae.encode`."""
        from ..reference.vae import ENCODE_CHUNK_FRAMES

        vae = self.vae
        vae._check_video(video)
        b, _, t, h, w = video.shape
        if b != 1:
            raise ValueError(f"export {self.folder}: the exported VAE encoder takes one video (batch 1); got {b}")
        self.manifest.shapes.check(b, t, h, w, f"export {self.folder}")
        video = video.float()
        slots = self.chunks.slots(b, h, w, torch.float32, video.device)
        out, *slots = self.first(video[:, :, :1], *slots)
        features = [out]
        for start in range(1, t, ENCODE_CHUNK_FRAMES):
            out, *slots = self.steady(video[:, :, start:start + ENCODE_CHUNK_FRAMES], *slots)
            features.append(out)
        mu = vae.conv1(torch.cat(features, dim=2))[:, : vae.config.z_dim]
        return vae.normalize_latents(mu)
