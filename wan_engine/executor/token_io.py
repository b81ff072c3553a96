"""`TokenIO`: latents to the fixed-shape core's inputs and its output back to a velocity.

Shared by every DiT that runs whole token-level steps: the executor, and the exported (ONNX,
TensorRT) DiTs that stand in for it. Needs `self.config` (DiTConfig), `self.shard_plan` (None or a
TokenShardPlan) and `self.rope_cache` (RopeCache).
"""
from __future__ import annotations

import torch

from ..reference.dit import check_timesteps, patchify, unpatchify, video_input
from .rope_cache import RopeTable


class TokenIO:
    def tokens_in(self, x: torch.Tensor, t: torch.Tensor, seq_len: int | None = None,
                  y: torch.Tensor | None = None) -> tuple[torch.Tensor, RopeTable]:
        """The fixed-shape core's inputs: (patches [B, f*h*w, patch features], the RoPE table of
        the grid padded to `seq_len`, rounded up to the sp degree). Arguments as `predict`."""
        cfg = self.config
        x = video_input(cfg, x, y)
        batch = x.shape[0]
        check_timesteps(t, batch)
        patches, grid = patchify(x, cfg.patch_size)
        real_len = patches.shape[1]
        seq_len = real_len if seq_len is None else seq_len
        if self.shard_plan is not None:
            seq_len = self.shard_plan.padded_length(seq_len)
        return patches, self.rope_table(grid, seq_len, x.device)

    def tokens_out(self, out: torch.Tensor, rope: RopeTable) -> torch.Tensor:
        """The head's token output [B, seq_len, ...] -> fp32 velocity [B, out_dim, F, H, W]."""
        cfg = self.config
        return unpatchify(out, rope.grid, cfg.patch_size, cfg.out_dim).float()

    def rope_table(self, grid: tuple[int, int, int], seq_len: int, device: torch.device) -> RopeTable:
        """The cached RoPE table of `grid` padded to `seq_len` tokens on `device`."""
        return self.rope_cache.get(grid, seq_len, device)

