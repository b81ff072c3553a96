"""Rank 0 tells the other ranks of a launch what to run: small JSON messages and per-step flags.

Messages travel as a length then UTF-8 JSON bytes over `torch.distributed.broadcast` on the world
group (no pickle: a peer's bytes are parsed, never executed). On NCCL the tensors live on this
rank's GPU. Every rank must make the same sequence of calls, as with any collective.
"""
from __future__ import annotations

import json

import torch
import torch.distributed as dist

MAX_MESSAGE_BYTES = 1 << 20  # a request is a few hundred bytes; refuse anything absurd


class RankChannel:
    """`send` on rank 0 pairs with `receive` on every other rank; `agree` on all ranks."""

    def __init__(self, rank: int):
        self.rank = rank

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def send(self, message: dict) -> None:
        if self.rank != 0:
            raise RuntimeError("only rank 0 sends")
        payload = json.dumps(message).encode()
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
        device = self._device()
        dist.broadcast(torch.tensor([len(payload)], dtype=torch.int64, device=device), src=0)
        dist.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device), src=0)

    def receive(self) -> dict:
        if self.rank == 0:
            raise RuntimeError("rank 0 sends, it does not receive")
        device = self._device()
        length = torch.zeros(1, dtype=torch.int64, device=device)
        dist.broadcast(length, src=0)
        size = int(length.item())
        if not 0 < size <= MAX_MESSAGE_BYTES:
            raise ValueError(f"rank 0 announced a message of {size} bytes (accepted: 1 to {MAX_MESSAGE_BYTES})")
        payload = torch.empty(size, dtype=torch.uint8, device=device)
        dist.broadcast(payload, src=0)
        return json.loads(bytes(payload.cpu().numpy()).decode())

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (others pass anything): one tiny broadcast."""
        value = torch.tensor([1 if flag and self.rank == 0 else 0], dtype=torch.int64, device=self._device())
        dist.broadcast(value, src=0)
        return bool(value.item())
