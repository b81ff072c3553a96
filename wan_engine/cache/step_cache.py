"""`StepCache`: one request's cached denoising steps over the executor's whole-step functions.

Each call runs, per CFG branch, either the block stack (storing what it added to the stream, the
residual) or the stored residual in its place, between the embedding and the head. The residuals
live here, per branch and, under sequence parallelism, per rank's token slice (each rank holds the
residual of its own tokens). Nothing is hooked into the model. The functions (executor/steps.py)
run directly, as CUDA-graph replays, or as an exported DiT's graphs: one code path for all three.

Decisions: a static schedule (TeaCache, MagCache: `schedules`), or the first-block rule (FBCache),
decided identically on every rank of the sequence-parallel group by reducing the change over the
group. `record=True` computes every step and keeps the calibration signals instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..executor import TextKV
from ..executor.steps import StepFunctions, text_tensors
from ..graphs import GraphReplayer
from .schedules import BRANCHES, first_block_reuses


class StepCache:
    """steps: the request's step count. Exactly one of `schedule` (per branch, True = compute) and
    `first_block_threshold` (FBCache) is given, unless `record` (compute all, keep signals).
    sp_group: the sequence-parallel group whose ranks share each forward (FBCache reduces over it).
    """

    def __init__(self, steps: int, *, schedule: list[list[bool]] | None = None,
                 first_block_threshold: float | None = None, sp_group=None, record: bool = False,
                 graphs: GraphReplayer | None = None):
        if record:
            schedule = [[True] * steps for _ in range(BRANCHES)]
        if (schedule is None) == (first_block_threshold is None):
            raise ValueError("give exactly one of schedule and first_block_threshold")
        if schedule is not None and (len(schedule) != BRANCHES or any(len(s) != steps for s in schedule)):
            raise ValueError(f"schedule must hold {BRANCHES} branches of {steps} decisions")
        self.steps = steps
        self.schedule = schedule
        self.threshold = first_block_threshold
        self.sp_group = sp_group
        self.record = record
        # Each kind of whole-step call replays its own CUDA graph; recording runs eagerly.
        self.graphs = graphs if graphs is not None and graphs.active and not record else None
        # decisions[branch][step]: True computed, False reused, None not run on this rank.
        self.decisions: list[list[bool | None]] = [[None] * steps for _ in range(BRANCHES)]
        # Keyed by (DiT, branch): a residual belongs to the DiT that computed it, so a two-expert
        # model's low-noise expert computes its first step and never reuses the high-noise one's.
        self._residual: dict[tuple[int, int], torch.Tensor] = {}
        self._first: dict[tuple[int, int], torch.Tensor] = {}  # FBCache: block 0's residual at the last computed step
        self.signals: dict[int, dict[str, list[float]]] = {b: {"residual_ratio": [], "output_rel_l1": []}
                                                          for b in range(BRANCHES)}
        self._last_output: dict[int, torch.Tensor] = {}
        self._last_recorded: dict[int, torch.Tensor] = {}  # per branch, whichever DiT computed it

    @property
    def dynamic(self) -> bool:
        return self.threshold is not None

    def predict(self, dit, x: torch.Tensor, t: torch.Tensor, text: TextKV, branches: tuple[int, ...],
                step: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """`dit.predict(x, t, text, y=y)` with the block stack cached. The batch holds `branches` in
        order (0 conditional, 1 unconditional), x.shape[0] // len(branches) rows each (y too).

        The step runs as whole-step functions (executor/steps.py): called directly, replayed as
        CUDA graphs, or an exported DiT's graphs. Branches that agree share one call; branches that
        disagree each run their own rows (only the computing one runs the blocks)."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.steps:
            raise ValueError(f"step must be an int in [0, {self.steps}) (the solver step being run); got {step!r}")
        rows = x.shape[0] // len(branches)
        patches, rope = dit.tokens_in(x, t, y=y)
        fns, call = self._functions(dit, rope, text)
        if self.dynamic:  # FBCache: block 0 first; its residual decides the rest of the stack
            # Borrowed: the rest's call copies these into its own inputs, and the decision copies
            # block 0's residual, before the next step replays this graph over them.
            after, normed, first = call(fns.key("first_block", patches, text), fns.first_block,
                                        patches, t, rope.cos, rope.sin, *text_tensors(text), borrow=True)
            decisions = self._first_block_decisions(dit, rope, first, branches, rows)
            compute, reuse = ("rest+residual", fns.rest_with_residual), ("rest_reuse", fns.rest_reuse)
            compute_lead, reuse_lead = (after, normed), (after,)
        else:
            decisions = [self.schedule[b][step] for b in branches]
            compute, reuse = ("full+residual", fns.full_with_residual), ("reuse", fns.reuse)
            compute_lead = reuse_lead = (patches,)
        groups = [range(len(branches))] if len(set(decisions)) == 1 else [range(j, j + 1) for j in range(len(branches))]
        outs = []
        for group in groups:
            part = slice(group[0] * rows, (group[-1] + 1) * rows)
            sub_text = text if len(group) == len(branches) else text.rows(part.start, part.stop)
            kv, sub_t = text_tensors(sub_text), t[part]
            if decisions[group[0]]:
                lead = tuple(tensor[part] for tensor in compute_lead)
                out, residual = call(fns.key(compute[0], lead[0], sub_text), compute[1],
                                     *lead, sub_t, rope.cos, rope.sin, *kv)
                for k, j in enumerate(group):
                    if self.record:
                        self._record_residual(branches[j], residual[k * rows:(k + 1) * rows])
                    self._residual[(id(dit), branches[j])] = residual[k * rows:(k + 1) * rows]
            else:
                lead = tuple(tensor[part] for tensor in reuse_lead)
                stored = torch.cat([self._stored(dit, branches[j], step) for j in group])
                out = call(fns.key(reuse[0], lead[0], sub_text), reuse[1], *lead, sub_t, rope.cos, rope.sin,
                           stored, *kv)
            outs.append(out)
        for branch, computed in zip(branches, decisions):
            self.decisions[branch][step] = computed
        velocity = dit.tokens_out(outs[0] if len(outs) == 1 else torch.cat(outs), rope)
        if self.record:
            for j, branch in enumerate(branches):
                self._record_output(branch, velocity[j * rows:(j + 1) * rows])
        return velocity

    def _functions(self, dit, rope, text):
        """The step's functions and how to call them: an exported DiT's own graphs, or the
        executor's as CUDA-graph replays (`graphs.call(key, fn, *inputs)`) or direct calls."""
        if hasattr(dit, "step_functions"):
            return dit.step_functions(rope, text), _direct
        return StepFunctions(dit, rope, text), (self.graphs.call if self.graphs is not None else _direct)

    # -- FBCache ----------------------------------------------------------------------------------

    def _first_block_decisions(self, dit, rope, first: torch.Tensor, branches, rows: int) -> list[bool]:
        """Per branch: compute the rest of the stack unless block 0's residual barely changed since
        the last step that computed it (decided alike on every sequence-parallel rank)."""
        valid = _real_rows(dit, rope, first.device)  # padded rows (sequence parallelism) take no part
        decisions = []
        for j, branch in enumerate(branches):
            current = first[j * rows:(j + 1) * rows][:, valid]
            previous = self._first.get((id(dit), branch))
            if previous is None:
                compute = True
            else:
                sums = torch.stack([(current - previous).abs().double().sum(), previous.abs().double().sum()])
                if self.sp_group is not None:
                    dist.all_reduce(sums, group=self.sp_group)
                change = float(sums[0] / sums[1]) if float(sums[1]) > 0 else float("inf")
                compute = not first_block_reuses(change, self.threshold)
            if compute:
                self._first[(id(dit), branch)] = current
            decisions.append(compute)
        return decisions

    # -- helpers ----------------------------------------------------------------------------------

    def _stored(self, dit, branch: int, step: int) -> torch.Tensor:
        residual = self._residual.get((id(dit), branch))
        if residual is None:
            raise ValueError(f"step {step} of branch {branch} reuses the cache, but no earlier step computed it "
                             f"(a schedule must compute each branch's first step)")
        return residual

    def _record_residual(self, branch: int, residual: torch.Tensor) -> None:
        """MagCache's signal: mean over tokens of |r_t| / |r_t-1|. Across a two-expert model's
        switch it compares the two experts' residuals, as the official calibration does (no
        schedule uses that step's ratio: the low-noise expert computes its first step)."""
        previous = self._last_recorded.get(branch)
        if previous is not None:
            ratio = (residual.norm(dim=-1) / previous.norm(dim=-1)).mean()
            self.signals[branch]["residual_ratio"].append(float(ratio))
        self._last_recorded[branch] = residual

    def _record_output(self, branch: int, velocity: torch.Tensor) -> None:
        previous = self._last_output.get(branch)
        if previous is not None:  # TeaCache's fitting target: relative L1 change of the output
            change = (velocity - previous).abs().mean() / previous.abs().mean()
            self.signals[branch]["output_rel_l1"].append(float(change))
        self._last_output[branch] = velocity


def _direct(key, fn, *inputs, borrow=False):
    return fn(*inputs)


def _real_rows(dit, rope, device) -> torch.Tensor:
    """Boolean [S_local] of this rank's rows that are real tokens (not sequence padding)."""
    index = torch.arange(rope.seq_len, device=device)
    if dit.shard_plan is not None:
        index = dit.shard_plan.shard(index, dim=0)
    return index < rope.real_len
