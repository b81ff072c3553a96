"""Block weights split over the ranks of a sequence-parallel group (the official code's `--dit_fsdp`).

Under sequence parallelism every rank of an sp group runs every block on its slice of the tokens,
so each holds every block's weights: about 28 GB for 14B in bf16, more than a 24 GB card has. With
`shard_block_weights` each rank keeps 1/W of every block's bytes instead. A block's tensors are
all-gathered into a reused buffer before the block runs; the text K/V weights likewise, one layer
at a time, once per request in `prepare_text`. The gathered bytes are the original
bytes, so the forward is the unsharded one bit for bit.

Memory per rank: the globals (embeddings, head, modulation tables), 1/W of the blocks and their
K/V weights, and two layers' buffers. Cost: each forward all-gathers every block's bytes once
(~700 MB per 14B block in bf16: milliseconds on NVLink, against tens of milliseconds of compute
at 720p). With `overlap` (the default) the gather of the next block is started, asynchronously,
into the other buffer before the current block runs, so the transfer hides behind its compute.
Inside a CUDA graph capture the gathers stay synchronous: an asynchronous collective under capture
is unverified here, and a capture that failed would turn graphs off for the whole run. The
gathers sit where the sequence-parallel collectives already synchronise the group (every rank
of it runs the same blocks, step caching included), into persistent buffers, so a CUDA graph
captures them with the rest of the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from wan_engine.executor import WanExecutor
from wan_engine.executor.weights import BlockWeights, ContextWeights, TensorStore

from .comm import group_rank, group_size

ALIGN = 16  # bytes: each tensor starts at a multiple of this, so its view is aligned for any dtype


@dataclass(frozen=True)
class _Slot:
    name: str
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class _Layout:
    """Where each tensor of a store sits in its packed bytes, padded to a multiple of ALIGN * world."""

    def __init__(self, store: TensorStore, world: int):
        self.slots: list[_Slot] = []
        offset = 0
        for name, tensor in store.named_buffers():
            nbytes = tensor.numel() * tensor.element_size()
            self.slots.append(_Slot(name, offset, nbytes, tensor.dtype, tuple(tensor.shape)))
            offset += -(-nbytes // ALIGN) * ALIGN
        self.total = -(-offset // (ALIGN * world)) * ALIGN * world

    def signature(self) -> tuple:
        return tuple((s.name, s.dtype, s.shape) for s in self.slots)

    def pack(self, store: TensorStore) -> torch.Tensor:
        """The store's tensors as one uint8 vector of `total` bytes (on the store's device)."""
        first = next(store.buffers())
        packed = torch.zeros(self.total, dtype=torch.uint8, device=first.device)
        for slot in self.slots:
            tensor = getattr(store, slot.name).contiguous()
            packed[slot.offset:slot.offset + slot.nbytes] = tensor.reshape(-1).view(torch.uint8)
        return packed

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of `packed` as the store's tensors."""
        return {s.name: packed[s.offset:s.offset + s.nbytes].view(s.dtype).view(s.shape) for s in self.slots}


class ShardedStores:
    """Same-layout stores (one per layer), each split over the ranks of `group`.

    `take(i, prefetch)` returns layer i's tensors as `cls` (a NamedTuple of the executor's weights),
    gathered into one of two buffers; they are valid until the next `take`. `prefetch` names the
    layer to be taken next: with `overlap` its gather starts now, into the other buffer.
    Collective: every rank of `group` calls it for the same layers in the same order. Building it
    empties the stores.
    """

    def __init__(self, stores, cls: type[NamedTuple], group: dist.ProcessGroup | None, device: torch.device,
                 overlap: bool = True):
        stores = list(stores)
        if not stores:
            raise ValueError("ShardedStores needs at least one store")
        if group_size(group) < 2:
            raise ValueError("weight sharding needs a group of >= 2 ranks (a sequence-parallel degree > 1)")
        self.cls, self.group = cls, group
        self.world, rank = group_size(group), group_rank(group)
        self.layout = _Layout(stores[0], self.world)
        chunk = self.layout.total // self.world
        self.shards: list[torch.Tensor] = []
        for i, store in enumerate(stores):
            layout = _Layout(store, self.world)
            if layout.signature() != self.layout.signature():
                raise ValueError(f"layer {i} holds other tensors than layer 0; every layer must have the same layout")
            packed = self.layout.pack(store)
            # clone: on the same device `.to` returns the slice itself, which would keep the whole vector alive.
            self.shards.append(packed[rank * chunk:(rank + 1) * chunk].to(device).clone())
            for slot in self.layout.slots:
                store.register_buffer(slot.name, None)  # the full tensors are freed here
            del packed
        self.overlap, self.device = overlap, device
        self._buffers = [torch.empty(self.layout.total, dtype=torch.uint8, device=device)
                         for _ in range(2 if overlap else 1)]
        self._current = 0  # the buffer that holds the layer returned last
        self._pending = None  # (layer, buffer index, work) of a gather in flight
        self.prefetched = 0  # takes served by a gather started ahead (overlapped with compute)

    def __len__(self) -> int:
        return len(self.shards)

    def take(self, i: int, prefetch: int | None = None):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[2].wait()  # also when it is another layer: its buffer must not be written twice
        if pending is not None and pending[0] == i:
            self._current = pending[1]
            self.prefetched += 1
        else:
            self._current = (self._current + 1) % len(self._buffers)
            dist.all_gather_into_tensor(self._buffers[self._current], self.shards[i], group=self.group)
        if prefetch is not None and self.overlap and not self._capturing():
            other = 1 - self._current
            work = dist.all_gather_into_tensor(self._buffers[other], self.shards[prefetch], group=self.group,
                                               async_op=True)
            self._pending = (prefetch, other, work)
        tensors = self.layout.unpack(self._buffers[self._current])
        return self.cls(**{name: tensors.get(name) for name in self.cls._fields})

    def _capturing(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()

    @property
    def shard_bytes(self) -> int:
        """Bytes of this rank's shards (1/W of every layer, padded)."""
        return sum(s.numel() for s in self.shards)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the gather buffers: one layer each (padded), two with `overlap`."""
        return sum(b.numel() for b in self._buffers)


def shard_block_weights(executor: WanExecutor, group: dist.ProcessGroup | None, device: torch.device,
                        overlap: bool = True) -> WanExecutor:
    """Split `executor`'s block and text K/V weights over `group` (in place) and move the rest of
    its weights to `device`; returns it. overlap: gather the next block while one runs (two
    buffers; False: one buffer, each gather waited for). Merge LoRAs and quantize before: the full
    block tensors are gone afterwards. Every rank of `group` calls it alike."""
    if not isinstance(executor, WanExecutor):
        raise ValueError(f"executor must be a WanExecutor (weight sharding needs engine='executor'), "
                         f"got {type(executor).__name__}")
    device = torch.device(device)
    blocks = ShardedStores(executor.blocks, BlockWeights, group, device, overlap)
    contexts = ShardedStores(executor.contexts, ContextWeights, group, device, overlap)
    executor.shard_weights(blocks, contexts)
    executor.to(device)
    return executor
