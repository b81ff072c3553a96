"""CUDA-graph replay of fixed-shape tensor functions (DiT steps, VAE chunks), with an eager fallback.

`GraphReplayer.call(key, fn, *inputs)` returns `fn(*inputs)`. On CUDA, the first call for a key
runs `fn` eagerly on a side stream (the warm-up; its result is returned), the second captures it
as a CUDA graph over static copies of the inputs and replays it, and later calls copy their
inputs into the static buffers and replay. Every graph shares one memory pool. Outputs are cloned
(a replay overwrites its static outputs; callers such as multistep solvers keep earlier ones), unless
the caller borrows them (`borrow=True`: the static outputs themselves, valid until the next replay
of that key; for intermediates that the next call consumes, such as FBCache's stream after block 0).

`fn` must be a fixed-shape function of its tensor inputs (the executor's forward and the static
VAE chunks are written to be): anything it closes over must not change between calls of the same
key. If a capture raises, the replayer turns itself off, keeps running eagerly, and reports the
reason once (`disabled_reason`). Off the GPU it is off from the start, with that reason.
"""
from __future__ import annotations

import logging
from typing import Callable, Hashable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)


class _Captured:
    """A graph with its static inputs and outputs; `fn` stands in for the graph when a test's
    capture context records none (replaying then re-runs `fn` on the static inputs)."""

    def __init__(self, graph, static_inputs: list[torch.Tensor], static_out, fn=None):
        self.graph, self.static_inputs, self.static_out, self.fn = graph, static_inputs, static_out, fn


class GraphReplayer:
    """enabled: try graphs (they still stay off without CUDA). capture: the capture context, for
    tests (default `torch.cuda.graph`)."""

    def __init__(self, device: torch.device | str, enabled: bool = True, capture=None):
        device = torch.device(device)
        self.device = device
        self._capture = capture
        self.disabled_reason: str | None = None
        if not enabled:
            self.disabled_reason = "disabled (--no-cuda-graphs)"
        elif device.type != "cuda" and capture is None:
            self.disabled_reason = f"CUDA graphs need a CUDA device; running eagerly on {device.type}"
        self._graphs: dict[Hashable, _Captured] = {}
        self._warm: set[Hashable] = set()
        self._pool = None
        self.replays = 0

    @property
    def active(self) -> bool:
        return self.disabled_reason is None

    @property
    def captured(self) -> int:
        """How many graphs are held (one per key)."""
        return len(self._graphs)

    def call(self, key: Hashable, fn: Callable, *inputs: torch.Tensor, borrow: bool = False):
        if not self.active:
            return fn(*inputs)
        # A graph replays on its captured shapes: inputs of other shapes or dtypes get their own.
        key = (key, tuple((tuple(t.shape), t.dtype) for t in inputs))
        captured = self._graphs.get(key)
        if captured is not None:
            return self._replay(captured, inputs, borrow)
        if key not in self._warm:
            self._warm.add(key)
            return self._on_side_stream(fn, inputs)
        try:
            captured = self._graphs[key] = self._record(fn, inputs)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager, reported once
            self._disable(f"capture of {key!r} failed ({type(err).__name__}: {err}); running eagerly")
            return fn(*inputs)
        return self._replay(captured, inputs, borrow)

    # -- internals --------------------------------------------------------------------------------

    def _on_side_stream(self, fn, inputs):
        if self.device.type != "cuda":
            return fn(*inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _record(self, fn, inputs) -> _Captured:
        static_inputs = [t.clone() for t in inputs]
        if self._capture is not None:  # tests: a stand-in capture context
            with self._capture():
                static_out = fn(*static_inputs)
            return _Captured(None, static_inputs, static_out, fn)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = fn(*static_inputs)
        return _Captured(graph, static_inputs, static_out)

    def _replay(self, captured: _Captured, inputs, borrow: bool = False):
        for static, new in zip(captured.static_inputs, inputs):
            static.copy_(new)
        if captured.graph is not None:
            captured.graph.replay()
        else:
            captured.static_out = captured.fn(*captured.static_inputs)
        self.replays += 1
        if borrow:
            return captured.static_out
        leaves, spec = tree_flatten(captured.static_out)
        return tree_unflatten([t.clone() if isinstance(t, torch.Tensor) else t for t in leaves], spec)

    def reset(self) -> None:
        """Forget every graph: a graph replays its kernels on the addresses it was captured with, so
        after the weights moved (offload puts the DiT back on new memory) each key is warmed up and
        captured again."""
        self._graphs.clear()
        self._warm.clear()
        self._pool = None

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self._graphs.clear()
        log.warning("CUDA graphs off: %s", reason)

