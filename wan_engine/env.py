"""The one place where wan_engine reads environment variables.

Read here: the launch contract of `torchrun` (torch.distributed.run: which process this is and
where the rendezvous lives) and Triton's interpreter switch, which must be set before the kernels
are imported. Everything else is configured through typed arguments.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# torchrun exports all of these to every worker it starts.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_MAX_PORT = 65535


def _parse_int(environ: Mapping[str, str], name: str, low: int, high: int | None = None) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"environment variable {name} must be {accepted}, got {value}")
    return value


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a launch: its global and node-local rank, and the rendezvous.

    The default instance is a plain single process (no launcher). `master_addr`/`master_port`
    are None when the launcher did not set them.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launched: bool = False  # True when a launcher (torchrun) exported RANK and WORLD_SIZE

    def __post_init__(self):
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}) for world_size "
                             f"{self.world_size}, got {self.rank}")
        if not 1 <= self.local_world_size <= self.world_size:
            raise ValueError(f"local_world_size must be in [1, {self.world_size}] (the world size), "
                             f"got {self.local_world_size}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"local_rank must be in [0, {self.local_world_size}) (local_world_size), "
                             f"got {self.local_rank}")
        if self.master_port is not None and not 1 <= self.master_port <= _MAX_PORT:
            raise ValueError(f"master_port must be in [1, {_MAX_PORT}], got {self.master_port}")
        if self.world_size > 1 and not self.launched:
            raise ValueError("world_size > 1 needs launched=True (processes started by a launcher)")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "LaunchEnv":
        """Read torchrun's variables; none of them set means a plain single process.

        A launch is recognised by RANK and WORLD_SIZE together; one without the other is refused.
        LOCAL_RANK / LOCAL_WORLD_SIZE default to RANK / WORLD_SIZE (one node) when absent.
        """
        has_rank, has_world = "RANK" in environ, "WORLD_SIZE" in environ
        if not has_rank and not has_world:
            return cls()
        if has_rank != has_world:
            missing = "WORLD_SIZE" if has_rank else "RANK"
            raise ValueError(f"environment sets {'RANK' if has_rank else 'WORLD_SIZE'} but not "
                             f"{missing}; launch with torchrun, which sets {', '.join(TORCHRUN_VARS)}")
        world_size = _parse_int(environ, "WORLD_SIZE", 1)
        rank = _parse_int(environ, "RANK", 0, world_size - 1)
        local_world_size = (_parse_int(environ, "LOCAL_WORLD_SIZE", 1, world_size)
                            if "LOCAL_WORLD_SIZE" in environ else world_size)
        local_rank = (_parse_int(environ, "LOCAL_RANK", 0, local_world_size - 1)
                      if "LOCAL_RANK" in environ else rank)
        master_port = _parse_int(environ, "MASTER_PORT", 1, _MAX_PORT) if "MASTER_PORT" in environ else None
        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            master_addr=environ.get("MASTER_ADDR") or None,
            master_port=master_port,
            launched=True,
        )

    @property
    def is_distributed(self) -> bool:
        """True when this process is one of several that must form a process group."""
        return self.launched and self.world_size > 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def tcp_init_method(self) -> str:
        """`tcp://addr:port` of the rendezvous (IPv6 addresses bracketed)."""
        if self.master_addr is None or self.master_port is None:
            raise ValueError("MASTER_ADDR and MASTER_PORT must be set for a multi-process launch "
                             "(torchrun sets both)")
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"tcp://{host}:{self.master_port}"


def use_triton_interpreter_without_gpu(environ=os.environ) -> bool:
    """Without a CUDA device, Triton kernels run only through its interpreter, and the switch must
    be set before any kernel module is imported (triton binds it at import). Sets
    TRITON_INTERPRET=1 unless the user set it already; returns whether the interpreter is on.
    The single place that sets it: tests/conftest.py and the bench CLI call this."""
    import torch

    if not torch.cuda.is_available():
        environ.setdefault("TRITON_INTERPRET", "1")
    return environ.get("TRITON_INTERPRET", "0") not in ("", "0")
