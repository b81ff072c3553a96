"""The exported functions as modules: fixed-shape tensor functions of the executor and the VAE.

Everything that varies is an input: the patches, the timesteps' fp32 sinusoid features (computed
on the host in float64, as the official: no graph holds float64), the RoPE rows as real cos/sin tables
(nothing complex-valued), the text K/V (and for i2v/flf2v the CLIP-token K/V), the stored residual
of a cached step, and the VAE's feature-cache slots (in and out). Shapes are dynamic where the
video size is: batch 1-2, tokens, latent rows and columns.
"""
from __future__ import annotations

from torch import nn

from ..executor.rope_cache import RopeTable
from ..executor.steps import StepFunctions, text_tensors
from ..vae.static import StaticChunks

# The split step (executor/steps.py): block 0, then the rest computed or reused. Block 0 and the
# rest hold each block's weights once between them; a whole step is the two calls in a row.
FIRST_BLOCK_KINDS = ("first_block", "rest_residual", "rest_reuse")
# What an export holds: the split step, and the reused whole step (no block weights) for TeaCache and
# MagCache. "full" and "full_residual" (each with every block's weights) export on request only.
DIT_KINDS = FIRST_BLOCK_KINDS + ("reuse",)
_METHODS = {"full": "full", "full_residual": "full_with_residual", "reuse": "reuse", "first_block": "first_block",
            "rest_residual": "rest_with_residual", "rest_reuse": "rest_reuse"}


class _TokenRowSteps(StepFunctions):
    """The executor's step functions with the RoPE table read from the rows of cos/sin, so the token
    count stays dynamic in the graph: no sequence padding, every key attended (the grid only matters
    for unpatchify, outside, and for where latent frame 0's rows end: `frame0_rows`, set per call)."""

    def __init__(self, executor, image: bool):
        self.dit, self.rope, self.image = executor, None, image
        self.frame0_rows = 1

    def _rope(self, cos, sin) -> RopeTable:
        n = cos.shape[0]
        return RopeTable(cos, sin, (1, self.frame0_rows, 1), n, n)


class DiTStep(nn.Module):
    """One whole-step function of the executor (executor/steps.py names their inputs and outputs),
    by export `kind`: the split step's "first_block", "rest_residual", "rest_reuse", the reused
    whole step "reuse", and on request the whole computed steps "full", "full_residual". `frame0`
    (TI2V): t is [B, 2] and an input after sin gives frame 0's token count by its length. t may be
    given as its features ([B, k, freq_dim], executor/model.py `timestep_features`), as exports
    take it. kv is (k, v), and (k, v, k_img, v_img) for an i2v/flf2v DiT (whose patches carry the
    conditioning channels)."""

    def __init__(self, executor, kind: str, frame0: bool = False):
        super().__init__()
        if kind not in _METHODS:
            raise ValueError(f"kind must be one of {', '.join(_METHODS)}; got {kind!r}")
        self.executor, self.kind, self.frame0 = executor, kind, frame0
        self._steps = _TokenRowSteps(executor, executor.config.uses_clip)
        self._fn = getattr(self._steps, _METHODS[kind])
        self._frame0_at = (2 if kind == "rest_residual" else 1) + 3  # after the lead tensors and (t, cos, sin)

    def forward(self, *inputs):
        if self.frame0:  # TI2V: t is [B, 2]; this input's length is frame 0's token count
            marker = inputs[self._frame0_at]
            self._steps.frame0_rows = marker.shape[0]
            inputs = inputs[:self._frame0_at] + inputs[self._frame0_at + 1:]
        return self._fn(*inputs)


class TimeEmbeddingStep(nn.Module):
    """One timestep's sinusoid features [1, freq_dim] -> the time embedding e [1, dim] and e0
    [1, 6, dim] (fp32): TeaCache measures its signal on them, once per request and timestep."""

    def __init__(self, executor):
        super().__init__()
        self.executor = executor

    def forward(self, features):
        return self.executor.embed_time(features)


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
