"""One Wan DiT block as a straight-line function of tensors (compile-, graph- and export-friendly).

The residual stream is carried together with its *already normalized* next input, so each
residual add runs fused with the LayerNorm that follows it (`gated_residual_norm`):

    in:   x (fp32 residual), normed = LN1(x) * (1 + scale1) + shift1   (compute dtype)
    self-attn(normed)        -> x = x + y * gate1,  normed = norm3(x)            (affine LN)
    cross-attn(normed)       -> x = x + y,          normed = LN2(x) * (1+scale2) + shift2
    ffn(normed)              -> x = x + y * gate2,  normed = next LN1 (or the head's LN) of x
    out:  (x, normed)

Numerics follow the official block: fp32 norms, modulation and gated residuals; GEMMs and
attention in the compute dtype; q/k RMSNorm over the whole dim, then RoPE from an fp32 table.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..ops import OpSet
from .weights import BlockWeights


class FirstRows(NamedTuple):
    """The first `rows` tokens of this rank's slice at another timestep than the rest: Wan2.2
    TI2V's conditioning frame (latent frame 0, at t = 0). Every modulated op runs on all rows
    with the bulk modulation, then again on these rows with theirs, which replace those rows: each
    row sees exactly its own timestep's modulation, as the official per-token modulation, for
    the price of re-running the cheap row-wise ops on one frame's rows.

    mod [6, B, dim] fp32: this block's modulation of those rows; next_shift / next_scale [B, dim]:
    the next block's (or the head's), for the block's last op."""

    rows: int
    mod: torch.Tensor
    next_shift: torch.Tensor
    next_scale: torch.Tensor

    # narrow, not a slice: its length is exactly `rows`, where an exported graph's slice of a dynamic
    # dim to a dynamic length has a length of its own (torch 2.11's export then cannot match the two).
    def rows_of(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.narrow(1, 0, self.rows) for t in tensors)

    def override(self, outs: tuple[torch.Tensor, ...], first_outs: tuple[torch.Tensor, ...]) -> None:
        for out, part in zip(outs, first_outs):
            out.narrow(1, 0, self.rows).copy_(part)


class BlockSpec(NamedTuple):
    num_heads: int
    head_dim: int
    eps: float
    compute_dtype: torch.dtype
    image: bool  # i2v/flf2v: cross-attention also attends to the CLIP tokens


def make_block_fn(ops: OpSet, spec: BlockSpec, out_dtype: torch.dtype,
                  self_attention: Callable | None = None, linear: Callable | None = None) -> Callable:
    """The block function for `ops`/`spec`; `out_dtype` is the dtype of the returned `normed`
    (the compute dtype, or fp32 after the last block, whose `normed` feeds the fp32 head).
    `self_attention` (default `ops.attention`) is called like an attention backend,
    `(q, k, v, kv_len=...)`; a sequence-parallel one (wan_engine.parallel.apply_parallel) sees this
    rank's token slice and the global `kv_len`. Cross-attention always uses `ops.attention`.
    `linear` (default: F.linear, the dense weights) runs the block's six GEMMs as
    `linear(x, weight, bias, scale)`; executor/fp8.py's fp8 GEMMs take the weights' scales.

    block(x [B,S,dim] fp32, normed [B,S,dim], w: BlockWeights, mod [6,B,dim] fp32 (shift1, scale1,
          gate1, shift2, scale2, gate2), next_shift, next_scale [B,dim] fp32, text_k, text_v
          [B,L,H,hd], img_k, img_v [B,257,H,hd] or None, cos, sin [S, hd//2] fp32, kv_len: int)
      -> (x [B,S,dim] fp32, normed [B,S,dim] out_dtype)
    kv_len: the number of real (unpadded) tokens; later keys are padding and are not attended.
    Under sequence parallelism S is this rank's slice and kv_len counts the whole sequence.
    first: `FirstRows` when the slice's first rows have their own timestep (TI2V), else None.
    """
    heads, head_dim, eps, cd, image = spec
    attend_self = ops.attention if self_attention is None else self_attention
    dim = heads * head_dim
    quantized = linear is not None  # static: fixed when the block function is built
    if linear is None:
        def linear(x, weight, bias, scale):
            return F.linear(x, weight, bias)

    def self_attention(normed, w: BlockWeights, cos, sin, kv_len):
        qkv = linear(normed, w.qkv_weight, w.qkv_bias, w.qkv_scale)  # one GEMM; q, k, v are views into it
        q, k = ops.rms_norm_rope_qk(qkv[..., :dim], qkv[..., dim: 2 * dim], w.norm_q, w.norm_k, cos, sin,
                                    heads, eps, cd)
        v = qkv[..., 2 * dim:].unflatten(-1, (heads, head_dim))
        out = attend_self(q, k, v, kv_len=kv_len)
        return linear(out.flatten(2), w.o_weight, w.o_bias, w.o_scale)

    def cross_attention(normed, w: BlockWeights, text_k, text_v, img_k, img_v):
        q = ops.rms_norm(linear(normed, w.cross_q_weight, w.cross_q_bias, w.cross_q_scale), w.cross_norm_q, eps, cd)
        q = q.unflatten(-1, (heads, head_dim))
        out = ops.attention(q, text_k, text_v)
        if image:  # static: fixed by the model type
            # The official sums the two attention outputs in fp32 (q's dtype there).
            out = (out.float() + ops.attention(q, img_k, img_v).float()).to(cd)
        return linear(out.flatten(2), w.cross_o_weight, w.cross_o_bias, w.cross_o_scale)

    def block(x, normed, w: BlockWeights, mod, next_shift, next_scale, text_k, text_v, img_k, img_v,
              cos, sin, kv_len: int, first: FirstRows | None = None):
        y = self_attention(normed, w, cos, sin, kv_len)

        def attended(x, y, mod):
            return ops.gated_residual_norm(x, y, mod[2], weight=w.norm3_weight, bias=w.norm3_bias, eps=eps,
                                           out_dtype=cd)
        x_new, normed = attended(x, y, mod)
        if first is not None:
            first.override((x_new, normed), attended(*first.rows_of(x, y), first.mod))
        x = x_new
        y = cross_attention(normed, w, text_k, text_v, img_k, img_v)

        def crossed(x, y, mod):
            return ops.gated_residual_norm(x, y, None, shift=mod[3], scale=mod[4], eps=eps, out_dtype=cd)
        x_new, normed = crossed(x, y, mod)
        if first is not None:
            first.override((x_new, normed), crossed(*first.rows_of(x, y), first.mod))
        x = x_new
        # GELU inside the first GEMM (its epilogue on CUDA): the [B, S, ffn_dim] activation is
        # written once instead of written, read and rewritten.
        if quantized:
            hidden = F.gelu(linear(normed, w.ffn1_weight, w.ffn1_bias, w.ffn1_scale), approximate="tanh")
        else:
            hidden = ops.linear_gelu(normed, w.ffn1_weight, w.ffn1_bias)
        y = linear(hidden, w.ffn2_weight, w.ffn2_bias, w.ffn2_scale)

        def fed(x, y, gate, shift, scale):
            return ops.gated_residual_norm(x, y, gate, shift=shift, scale=scale, eps=eps, out_dtype=out_dtype)
        out = fed(x, y, mod[5], next_shift, next_scale)
        if first is not None:
            first.override(out, fed(*first.rows_of(x, y), first.mod[5], first.next_shift, first.next_scale))
        return out

    return block
