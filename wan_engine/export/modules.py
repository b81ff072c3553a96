"""The exported functions as modules: fixed-shape tensor functions of the executor and the VAE.

Everything that varies is an input: the patches, timesteps, the RoPE rows as real cos/sin tables
(nothing complex-valued), the text K/V (and for i2v/flf2v the CLIP-token K/V), the stored residual
of a cached step, and the VAE's feature-cache slots (in and out). Shapes are dynamic where the
video size is: batch 1-2, tokens, latent rows and columns.
"""
from __future__ import annotations

from torch import nn

from ..executor.rope_cache import RopeTable
from ..executor.steps import text_tensors
from ..executor.text_cache import TextKV
from ..vae.static import StaticChunks

DIT_KINDS = ("full", "full_residual", "reuse")


class DiTStep(nn.Module):
    """`kind` "full": (patches, t, cos, sin, *kv) -> head tokens; "full_residual": -> (head tokens,
    block-stack residual); "reuse": (patches, t, cos, sin, residual, *kv) -> head tokens. kv is
    (k, v), and (k, v, k_img, v_img) for an i2v/flf2v DiT (whose patches carry the conditioning
    channels). The rows of cos/sin are the tokens: no sequence padding, every key attended."""

    def __init__(self, executor, kind: str):
        super().__init__()
        if kind not in DIT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(DIT_KINDS)}; got {kind!r}")
        self.executor, self.kind = executor, kind

    def _rope(self, cos, sin) -> RopeTable:
        n = cos.shape[0]
        return RopeTable(cos, sin, (1, 1, 1), n, n)  # the grid only matters for unpatchify, outside

    def forward(self, patches, t, cos, sin, *rest):
        ex = self.executor
        if self.kind == "full":
            return ex.forward_tokens(patches, t, TextKV(*rest), self._rope(cos, sin))
        stream = ex.embed(patches, t, self._rope(cos, sin))
        if self.kind == "full_residual":
            out = ex.run_blocks(stream, TextKV(*rest))
            return ex.head(out), out.x - stream.x
        residual, *kv = rest
        return ex.head(ex.skip_blocks(stream, residual))


class TextKVStep(nn.Module):
    """Text embeddings [B, text_len, text_dim] (zero-padded) -> every layer's cross-attention K and V
    [num_layers, B, text_len, heads, head_dim]: once per request. An i2v/flf2v DiT also takes the
    fp32 CLIP features [B, tokens, image_dim] and returns their K and V after the text's."""

    def __init__(self, executor):
        super().__init__()
        self.executor = executor

    def forward(self, context, *clip_fea):
        return text_tensors(self.executor.prepare_text(context, *clip_fea))


class VAEChunk(nn.Module):
    """One static VAE chunk: (x, *slots) -> (out, *slots), `first` or steady."""

    def __init__(self, chunks: StaticChunks, first: bool):
        super().__init__()
        self.chunks, self.first = chunks, first
        self.body = chunks.module  # registered, so the export lifts its weights as parameters

    def forward(self, x, *slots):
        out, new = self.chunks.run(x, tuple(slots), first=self.first)
        return (out, *new)
