"""The executor's step as functions of tensors only: what a CUDA graph captures and replays.

A graph replays fixed kernels on fixed addresses, so everything that changes between calls is an
argument (copied into the graph's static inputs): the patches, the timesteps, the RoPE rows, the
text K/V of the request and, for a reused step, the stored residual. `StepFunctions(dit, rope,
text)` fixes what the shapes are; its methods take those tensors and return tensors.

    full(patches, t, cos, sin, *kv)                    -> head tokens
    full_with_residual(patches, t, cos, sin, *kv)      -> (head tokens, block-stack residual)
    reuse(patches, t, cos, sin, residual, *kv)         -> head tokens

FBCache splits a step after block 0 (its decision reads block 0's residual between the calls):

    first_block(patches, t, cos, sin, *kv)             -> (stream after block 0, its normed input
                                                           to block 1, block 0's residual)
    rest_with_residual(x, normed, t, cos, sin, *kv)    -> (head tokens, residual of blocks 1..)
    rest_reuse(x, t, cos, sin, residual, *kv)          -> head tokens
"""
from __future__ import annotations

import torch

from .rope_cache import RopeTable
from .text_cache import TextKV


def text_tensors(text: TextKV) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in (text.k, text.v, text.k_img, text.v_img) if t is not None)


class StepFunctions:
    def __init__(self, dit, rope: RopeTable, text: TextKV):
        self.dit, self.rope, self.image = dit, rope, text.k_img is not None

    def key(self, kind: str, patches: torch.Tensor, text: TextKV) -> tuple:
        """What fixes a graph: the DiT (a graph holds its weights' addresses; a two-expert model has
        two), the kind, the shapes, and the rope table's grid and padding."""
        return (id(self.dit), kind, tuple(patches.shape), text.batch, self.rope.grid, self.rope.seq_len, self.image)

    def _text(self, kv) -> TextKV:
        return TextKV(*kv) if self.image else TextKV(kv[0], kv[1])

    def _rope(self, cos, sin) -> RopeTable:
        return self.rope._replace(cos=cos, sin=sin)

    def full(self, patches, t, cos, sin, *kv):
        return self.dit.forward_tokens(patches, t, self._text(kv), self._rope(cos, sin))

    def full_with_residual(self, patches, t, cos, sin, *kv):
        stream = self.dit.embed(patches, t, self._rope(cos, sin))
        out = self.dit.run_blocks(stream, self._text(kv))
        return self.dit.head(out), out.x - stream.x

    def reuse(self, patches, t, cos, sin, residual, *kv):
        stream = self.dit.embed(patches, t, self._rope(cos, sin))
        return self.dit.head(self.dit.skip_blocks(stream, residual))

    def first_block(self, patches, t, cos, sin, *kv):
        stream = self.dit.embed(patches, t, self._rope(cos, sin))
        after = self.dit.run_blocks(stream, self._text(kv), stop=1)
        return after.x, after.normed, after.x - stream.x

    def rest_with_residual(self, x, normed, t, cos, sin, *kv):
        out = self.dit.run_blocks(self.dit.stream_at(x, t, self._rope(cos, sin), 1, normed), self._text(kv))
        return self.dit.head(out), out.x - x

    def rest_reuse(self, x, t, cos, sin, residual, *kv):
        stream = self.dit.stream_at(x, t, self._rope(cos, sin), 1, None)
        return self.dit.head(self.dit.skip_blocks(stream, residual))
