"""Parallel degrees of one engine: sequence parallelism (Ulysses x ring) and CFG parallelism.

A launch of `world_size` processes is laid out as a (cfg, ring, ulysses) grid. Every misfit between
the degrees, the launched world and the model is refused here, before any weight is loaded or any
process group is touched, with a message that says what would work instead.
"""
from __future__ import annotations

from dataclasses import dataclass

# Classifier-free guidance has exactly two branches (conditional, unconditional) to place on ranks.
MAX_CFG_DEGREE = 2


def divisors(n: int) -> list[int]:
    """All positive divisors of `n` (n >= 1), ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_degree(name: str, value: object) -> None:
    # bool is an int subclass; `ulysses=True` is a typo, not a degree.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of each parallel dimension; their product is the number of processes.

    ulysses: all-to-all sequence parallelism over heads; must divide the model's head count.
    ring:    ring attention over sequence blocks; any degree works (the sequence is padded).
    cfg:     the conditional and unconditional CFG branches run on different ranks (1 or 2).
    """

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    def __post_init__(self):
        _check_degree("ulysses", self.ulysses)
        _check_degree("ring", self.ring)
        _check_degree("cfg", self.cfg)
        if self.cfg > MAX_CFG_DEGREE:
            raise ValueError(
                f"cfg must be 1 or {MAX_CFG_DEGREE} (guidance has two branches), got {self.cfg}"
            )

    @property
    def world_size(self) -> int:
        """Processes this layout needs: cfg * ring * ulysses."""
        return self.cfg * self.ring * self.ulysses

    @property
    def sp_degree(self) -> int:
        """Sequence-parallel degree: the number of shards the token sequence is cut into."""
        return self.ring * self.ulysses

    def describe(self) -> str:
        return f"cfg={self.cfg} x ring={self.ring} x ulysses={self.ulysses}"

    def validate(self, num_heads: int, world_size: int) -> None:
        """Refuse a layout that cannot run `num_heads`-head attention on `world_size` processes.

        Raises ValueError naming the offending numbers and, for a bad Ulysses degree, the valid
        degrees and a Ulysses x ring split of the same sequence-parallel degree that works.
        """
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if world_size != self.world_size:
            raise ValueError(
                f"parallel layout {self.describe()} needs world_size={self.world_size} processes, "
                f"but world_size={world_size} were launched; make the product of the degrees equal "
                f"the number of processes"
            )
        if num_heads % self.ulysses:
            valid = divisors(num_heads)
            # Keep the sequence-parallel degree, move the part Ulysses cannot take onto the ring.
            best = max(d for d in valid if self.sp_degree % d == 0)
            hint = f"--ulysses {best} --ring {self.sp_degree // best}"
            raise ValueError(
                f"ulysses={self.ulysses} does not divide num_heads={num_heads} of this model; "
                f"valid ulysses degrees: {', '.join(map(str, valid))}; use ring parallelism for "
                f"the rest (e.g. {hint})"
            )
