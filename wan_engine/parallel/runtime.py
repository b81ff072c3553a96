"""Process-group lifecycle of a multi-process run: start, shared randomness, failures, shutdown.

Launch contract: `torchrun --nproc-per-node N ...` starts N processes; each reads its place from
`wan_engine.env.LaunchEnv` and calls `init_distributed`, which checks the layout against the launch
*before* any process group exists, so a bad layout fails fast and identically on every rank.

Failures and time bounds. Every collective, on the world group and on the mesh's sub-groups, is
created with the same `timeout_s`. When a rank fails:
- it raised and its process exited: gloo peers fail at their next collective almost at once
  (the connection is closed); NCCL peers fail when the collective times out, within `timeout_s`
  (torch's NCCL watchdog aborts a timed-out collective by default). torchrun also stops the other
  workers once one exits with an error.
- it hangs (alive but never joins): peers fail after `timeout_s`.
A peer that is still computing fails on reaching its next collective, so the bound is the compute
time between two collectives plus `timeout_s`. `peer_failure_guard` turns torch's low-level
collective error into `PeerFailure`, which says which rank saw what and why. `timeout_s` must
exceed the longest legitimate wait between ranks (e.g. rank 0 encoding text while the others wait
at the noise broadcast), or a slow but healthy rank is reported as failed.
"""
from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from wan_engine.env import LaunchEnv

from .config import ParallelConfig
from .mesh import ParallelMesh

DEFAULT_TIMEOUT_S = 600.0  # NCCL's own default; long enough for a 14B model load on a slow rank
_SEED_BOUND = 2**63        # seeds are non-negative int64 values, as the runner draws them


# gloo raises a plain RuntimeError ("[.../gloo/transport/tcp/pair.cc] Read error ... Connection
# reset by peer", "... gloo ... Timed out waiting"), so the backend's name in the message is the
# only mark of a failed collective; NCCL and c10d errors are DistError subclasses or name NCCL.
_COLLECTIVE_ERROR = re.compile(r"gloo|NCCL|ProcessGroup|c10d")


class PeerFailure(RuntimeError):
    """A collective failed on this rank because another rank crashed, hung or disconnected."""


def is_collective_error(err: BaseException) -> bool:
    """Whether `err` comes from a torch.distributed collective rather than from this rank's code."""
    if isinstance(err, dist.DistError):
        return True
    return type(err) is RuntimeError and bool(_COLLECTIVE_ERROR.search(str(err)))


def rank_device(device: torch.device | str, launch: LaunchEnv) -> torch.device:
    """The device this process computes on: `cuda:LOCAL_RANK` for CUDA, the CPU otherwise.

    Raises ValueError for a device type other than cpu/cuda, or an explicit CUDA index that
    contradicts LOCAL_RANK under a multi-process launch.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    if not launch.is_distributed:
        return device if device.index is not None else torch.device("cuda", 0)
    if device.index is not None and device.index != launch.local_rank:
        raise ValueError(f"device {device} contradicts LOCAL_RANK={launch.local_rank}: under torchrun "
                         f"each process uses cuda:LOCAL_RANK; pass device='cuda'")
    return torch.device("cuda", launch.local_rank)


def _check_timeout(timeout_s: float) -> timedelta:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    return timedelta(seconds=float(timeout_s))


def init_distributed(
    config: ParallelConfig,
    launch: LaunchEnv,
    device: torch.device | str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    num_heads: int | None = None,
    init_method: str | None = None,
) -> ParallelMesh:
    """Join the process group of this launch and build the (cfg, ring, ulysses) mesh over it.

    Checks, before any communication: the launched WORLD_SIZE equals `config.world_size`, and (if
    `num_heads` is given) that Ulysses divides the heads. A single process (no launcher, or a
    launch of one) gets `ParallelMesh.single()` without touching torch.distributed. Otherwise the
    backend is NCCL for CUDA (after `torch.cuda.set_device(LOCAL_RANK)`) and gloo for the CPU;
    `timeout_s` bounds every collective of the world group and of the mesh sub-groups.
    `init_method` defaults to torchrun's rendezvous (`tcp://MASTER_ADDR:MASTER_PORT`).
    """
    timeout = _check_timeout(timeout_s)
    if not isinstance(config, ParallelConfig):
        raise ValueError(f"config must be a ParallelConfig, got {type(config).__name__}")
    if config.world_size != launch.world_size:
        how = ("a single process was started" if not launch.launched
               else f"torchrun started WORLD_SIZE={launch.world_size} processes")
        raise ValueError(
            f"parallel layout {config.describe()} needs world_size={config.world_size} processes, "
            f"but {how}; launch with `torchrun --nproc-per-node {config.world_size}` or change the "
            f"degrees so that their product is {launch.world_size}"
        )
    if num_heads is not None:
        config.validate(num_heads, launch.world_size)
    local_device = rank_device(device, launch)
    if not launch.is_distributed:
        return ParallelMesh.single()
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialized in this process; "
                           "call shutdown() before init_distributed()")
    if local_device.type == "cuda":
        if not torch.cuda.is_available() or launch.local_rank >= torch.cuda.device_count():
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(f"LOCAL_RANK={launch.local_rank} needs a CUDA device cuda:{launch.local_rank}, "
                             f"but {count} are visible; start at most {count} processes per node")
        torch.cuda.set_device(local_device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend,
        init_method=init_method or launch.tcp_init_method(),
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout,
    )
    return ParallelMesh.build(config, timeout=timeout)


def shutdown() -> None:
    """Destroy the default process group and every sub-group; a no-op when none exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- rank 0 owns the randomness -----------------------------------------------------------------


def _broadcast_over(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> None:
    if group is not None:
        dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)


def broadcast_from_rank0(tensor: torch.Tensor, mesh: ParallelMesh) -> torch.Tensor:
    """Overwrite `tensor` in place with mesh rank 0's values on every rank of the mesh; returns it.

    Every rank passes a tensor of the same shape and dtype (its contents are ignored except on
    rank 0), on the backend's device (CUDA for NCCL). Goes through the mesh's own groups, cfg
    then sp, so it works for a mesh laid over any process group: mesh rank 0 sits at cfg = sp = 0.
    """
    if mesh.config.world_size == 1:
        return tensor
    if not tensor.is_contiguous():
        raise ValueError("tensor must be contiguous (it is overwritten in place by the broadcast)")
    if mesh.sp_rank == 0:  # the heads of the sp groups, one per cfg branch
        _broadcast_over(tensor, mesh.cfg_group)
    _broadcast_over(tensor, mesh.sp_group)
    return tensor


def _collective_device(mesh: ParallelMesh) -> torch.device:
    group = mesh.sp_group or mesh.cfg_group
    if group is not None and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shared_seed(seed: int | None, mesh: ParallelMesh) -> int:
    """The seed every rank uses: `seed`, or when None one drawn from OS entropy on rank 0; in
    both cases rank 0's value is broadcast, so a launch cannot diverge ("same seed, same video")."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < _SEED_BOUND):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if mesh.rank == 0 and seed is None:
        seed = random.SystemRandom().randrange(_SEED_BOUND)
    if mesh.config.world_size == 1:
        return seed
    value = torch.tensor([-1 if seed is None else seed], dtype=torch.int64,
                         device=_collective_device(mesh))
    return int(broadcast_from_rank0(value, mesh).item())


def shared_noise(shape: tuple[int, ...], seed: int, mesh: ParallelMesh,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 standard normal noise of `shape` drawn on rank 0 from `seed` and broadcast to all.

    Draws on `device` with a generator seeded like the single-process pipeline, so a launch of
    N processes starts from the very tensor one process would draw.
    """
    device = torch.device(device)
    if mesh.rank == 0:
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    else:
        noise = torch.empty(shape, device=device, dtype=torch.float32)
    return broadcast_from_rank0(noise, mesh)


# --- failures -----------------------------------------------------------------------------------


@contextmanager
def peer_failure_guard(mesh: ParallelMesh, timeout_s: float) -> Iterator[None]:
    """Re-raise a failed collective inside the block as `PeerFailure` with a readable cause.

    Errors raised by this rank's own code pass through unchanged: the process then exits and its
    peers fail within the bounds described in the module docstring. Use around the per-rank work:

        with peer_failure_guard(mesh, timeout_s):
            video = pipeline.generate(...)
    """
    _check_timeout(timeout_s)
    try:
        yield
    except RuntimeError as err:
        if not is_collective_error(err):
            raise
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PeerFailure(
            f"rank {mesh.rank} of {mesh.config.world_size} ({mesh.config.describe()}): a collective "
            f"failed ({type(err).__name__}: {first_line}). Another rank most likely crashed, was "
            f"killed or hung; its own log has the cause. Collectives give up after {timeout_s:g} s "
            f"(the process-group timeout)."
        ) from err
