"""Peak bytes of the tensors a call creates, counted exactly on any device (the CPU included).

`torch.cuda.max_memory_allocated` exists only on CUDA, and the process's resident set size on the
CPU is blurred by the allocator's free lists. `LiveBytes` instead watches every tensor an op
returns (a `TorchDispatchMode`): it counts each storage once while any tensor that was returned
on it is alive, and keeps the running peak. Inputs and weights that exist before the call are not
counted: what it measures is the call's own working memory (activations, caches, outputs).

    with LiveBytes() as mem:
        decode(latents)
    mem.peak  # bytes
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [live tensors on it, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr == 0 or nbytes == 0:
            return
        entry = self._storages.get(ptr)
        if entry is None:
            entry = self._storages[ptr] = [0, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(tensor, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._storages.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[ptr]
