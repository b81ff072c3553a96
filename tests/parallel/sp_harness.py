"""Test helpers: spawn gloo process groups on CPU (or NCCL ones, one GPU per rank), plus exact
attention oracles.

`run_ranks` starts one spawned process per rank (fresh interpreters: no inherited threads or
process-group state), joins them through a file:// rendezvous, runs `worker(rank, world_size,
*args)` in each and returns what every rank returned or raised. Nothing it starts can outlive
the call: on a deadline or a failure the remaining children are killed by their handles. With
backend="nccl", rank r runs on cuda:r (set as its current device before the group forms).
"""
from __future__ import annotations

import math
import os
import queue as queue_module
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass
class RankOutcome:
    rank: int
    ok: bool
    value: Any  # the worker's return value, or the formatted traceback when ok is False
    exitcode: int | None = None


def _rank_main(rank, world_size, init_file, pg_timeout_s, results, worker, args, backend="gloo"):
    # Two shared cores: intra-op threads in every rank would only fight each other.
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)  # NCCL binds a communicator to the current device
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=pg_timeout_s),
    )
    failed = False
    try:
        results.put((rank, True, worker(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, then the process fails
        failed = True
        results.put((rank, False, traceback.format_exc()))
    finally:
        if not failed:
            dist.destroy_process_group()
    if failed:
        # Exit at once without tearing down the group: a failed rank is what the failure tests
        # simulate, and a crashed process does not say goodbye to its peers either.
        results.close()
        results.join_thread()
        os._exit(1)


def run_ranks(
    world_size: int,
    worker: Callable[..., Any],
    *args: Any,
    pg_timeout_s: float = 60.0,
    deadline_s: float = 120.0,
    backend: str = "gloo",
) -> list[RankOutcome]:
    """Run `worker(rank, world_size, *args)` on `world_size` ranks of `backend` ("gloo" on the
    CPU, "nccl" with one GPU per rank); outcomes by rank.

    `worker` must be a module-level function of an importable module (spawn pickles it by
    name). Raises AssertionError when a rank neither reports nor exits before `deadline_s`.
    """
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend 'nccl' with {world_size} ranks needs {world_size} GPUs, "
                         f"found {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    outcomes: dict[int, RankOutcome] = {}
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [
            ctx.Process(
                target=_rank_main,
                args=(rank, world_size, init_file, pg_timeout_s, results, worker, args, backend),
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + deadline_s
        try:
            while len(outcomes) < world_size and time.monotonic() < deadline:
                try:
                    rank, ok, value = results.get(timeout=0.2)
                    outcomes[rank] = RankOutcome(rank, ok, value)
                except queue_module.Empty:
                    # A rank that died without reporting (e.g. a segfault) never will.
                    for rank, p in enumerate(procs):
                        if rank not in outcomes and p.exitcode is not None:
                            outcomes[rank] = RankOutcome(rank, False, f"exited with {p.exitcode}")
            for p in procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
    missing = [r for r in range(world_size) if r not in outcomes]
    if missing:
        raise AssertionError(f"ranks {missing} neither reported nor exited within {deadline_s} s")
    for rank, p in enumerate(procs):
        outcomes[rank].exitcode = p.exitcode
    return [outcomes[r] for r in range(world_size)]


def run_ranks_ok(world_size: int, worker: Callable[..., Any], *args: Any, **kw: Any) -> list[Any]:
    """`run_ranks`, failing the test with every rank's traceback unless all ranks succeeded."""
    outcomes = run_ranks(world_size, worker, *args, **kw)
    errors = [f"--- rank {o.rank} ---\n{o.value}" for o in outcomes if not o.ok]
    if errors:
        raise AssertionError("\n".join(errors))
    return [o.value for o in outcomes]


# --- attention on one process -----------------------------------------------------------------


def local_math_attention(q, k, v, kv_len):
    """The `local_attn` the primitives get in tests: explicit fp32 softmax with its lse.

    q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]`; keys at positions >= kv_len are dropped. Returns out
    `[B, Sq, H, D]` in q's dtype and lse `[B, H, Sq]` fp32. Refuses a kv_len a caller should never
    pass (0 real keys means the block must be skipped, not attended).
    """
    if kv_len is not None and not 1 <= kv_len <= k.shape[1]:
        raise ValueError(f"kv_len must be in [1, {k.shape[1]}], got {kv_len}")
    if kv_len is not None:
        k, v = k[:, :kv_len], v[:, :kv_len]
    qh, kh, vh = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
    row_max = scores.amax(dim=-1, keepdim=True)
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    out = (weights @ vh) / denom
    lse = (row_max + denom.log()).squeeze(-1)
    return out.transpose(1, 2).to(q.dtype), lse


def attention_oracle(q, k, v, kv_len=None):
    """Full attention in float64 over the first `kv_len` keys: out `[B, Sq, H, D]`, lse `[B, H, Sq]`."""
    q, k, v = (t.double() for t in (q, k, v))
    if kv_len is not None:
        k, v = k[:, :kv_len], v[:, :kv_len]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)
    return out, torch.logsumexp(scores, dim=-1)


def random_qkv(batch, seq_padded, heads, head_dim, real_len, seed, dtype=torch.float32):
    """Seeded q, k, v `[B, seq_padded, H, D]`. Keys and values at positions >= real_len hold
    large garbage so that a padded key leaking into any softmax moves the result far beyond the
    tolerance. (Padded queries stay O(1): large queries only sharpen their own softmax, which
    costs fp32 accuracy without testing anything.)"""
    gen = torch.Generator().manual_seed(seed)
    shape = (3, batch, seq_padded, heads, head_dim)
    qkv = torch.randn(shape, generator=gen, dtype=torch.float64)
    qkv[1:, :, real_len:] *= 50.0
    return tuple(qkv.to(dtype).unbind(0))


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).norm() / expected.norm())
