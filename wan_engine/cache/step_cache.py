"""`StepCache`: one request's cached denoising steps over the executor's staged forward.

Each call runs `begin` (patch embedding, modulation), then per CFG branch either the block stack
(storing what it added to the stream, the residual) or the stored residual in its place, then the
head. The residuals live here, per branch and, under sequence parallelism, per rank's token slice
(each rank holds the residual of its own tokens). Nothing is hooked into the model.

Decisions: a static schedule (TeaCache, MagCache: `schedules`), or the first-block rule (FBCache),
decided identically on every rank of the sequence-parallel group by reducing the change over the
group. `record=True` computes every step and keeps the calibration signals instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..executor import TextKV, TokenStream
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
        # Static schedules replay a "full" and a "reuse" CUDA graph when every branch of a call
        # agrees; FBCache (a decision inside the forward), recording and split calls run eagerly.
        self.graphs = graphs if graphs is not None and graphs.active and schedule is not None and not record else None
        # decisions[branch][step]: True computed, False reused, None not run on this rank.
        self.decisions: list[list[bool | None]] = [[None] * steps for _ in range(BRANCHES)]
        self._residual: dict[int, torch.Tensor] = {}
        self._first: dict[int, torch.Tensor] = {}  # FBCache: first block's residual at the last computed step
        self.signals: dict[int, dict[str, list[float]]] = {b: {"residual_ratio": [], "output_rel_l1": []}
                                                          for b in range(BRANCHES)}
        self._last_output: dict[int, torch.Tensor] = {}

    @property
    def dynamic(self) -> bool:
        return self.threshold is not None

    def predict(self, dit, x: torch.Tensor, t: torch.Tensor, text: TextKV, branches: tuple[int, ...],
                step: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """`dit.predict(x, t, text, y=y)` with the block stack cached. The batch holds `branches` in
        order (0 conditional, 1 unconditional), x.shape[0] // len(branches) rows each (y too)."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.steps:
            raise ValueError(f"step must be an int in [0, {self.steps}) (the solver step being run); got {step!r}")
        rows = x.shape[0] // len(branches)
        exported = hasattr(dit, "step_functions")  # an exported DiT runs whole steps, no staged forward
        if exported and self.dynamic:
            raise ValueError("the first-block cache decides inside the forward; an exported DiT runs whole steps: "
                             "use teacache or magcache with --engine onnx/trt")
        if exported or self.graphs is not None:
            decisions = [self.schedule[b][step] for b in branches]
            if all(decisions) or not any(decisions):
                return self._whole_steps(dit, x, t, text, branches, step, rows, all(decisions), y)
            if exported:  # the branches disagree: each branch's rows as its own whole step
                return torch.cat([self._whole_steps(dit, x[j * rows:(j + 1) * rows], t[j * rows:(j + 1) * rows],
                                                    text.rows(j * rows, (j + 1) * rows), (b,), step, rows, c,
                                                    None if y is None else y[j * rows:(j + 1) * rows])
                                  for j, (b, c) in enumerate(zip(branches, decisions))])
        stream = dit.begin(x, t, y=y)
        if self.dynamic:
            stream, decisions = self._first_block(dit, stream, text, branches, rows, step)
        else:
            decisions = [self.schedule[b][step] for b in branches]
        start_x = stream.x
        if all(decisions):
            out = dit.run_blocks(stream, text)
        elif not any(decisions):
            out = dit.skip_blocks(stream, torch.cat([self._stored(b, step) for b in branches]))
        else:  # the branches disagree: only those that compute run the blocks
            parts = []
            for j, (branch, compute) in enumerate(zip(branches, decisions)):
                part = stream.rows(j * rows, (j + 1) * rows)
                parts.append(dit.run_blocks(part, text.rows(j * rows, (j + 1) * rows)) if compute
                             else dit.skip_blocks(part, self._stored(branch, step)))
            out = TokenStream.cat(parts)
        for j, (branch, compute) in enumerate(zip(branches, decisions)):
            self.decisions[branch][step] = compute
            if compute:
                residual = out.x[j * rows:(j + 1) * rows] - start_x[j * rows:(j + 1) * rows]
                if self.record:
                    self._record_residual(branch, residual)
                self._residual[branch] = residual
        velocity = dit.finish(out)
        if self.record:
            for j, branch in enumerate(branches):
                self._record_output(branch, velocity[j * rows:(j + 1) * rows])
        return velocity

    def _whole_steps(self, dit, x, t, text, branches, step, rows, compute: bool, y=None) -> torch.Tensor:
        """All `branches` computing (storing their residual) or all reusing, as one whole-step
        function: a CUDA-graph replay of the executor's, or an exported DiT's own."""
        patches, rope = dit.tokens_in(x, t, y=y)
        if hasattr(dit, "step_functions"):
            fns = dit.step_functions(rope, text)

            def call(key, fn, *inputs):
                return fn(*inputs)
        else:
            fns, call = StepFunctions(dit, rope, text), self.graphs.call
        kv = text_tensors(text)
        if compute:
            out, residual = call(fns.key("full+residual", patches, text), fns.full_with_residual,
                                 patches, t, rope.cos, rope.sin, *kv)
            for j, branch in enumerate(branches):
                self._residual[branch] = residual[j * rows:(j + 1) * rows]
        else:
            residual = torch.cat([self._stored(b, step) for b in branches])
            out = call(fns.key("reuse", patches, text), fns.reuse, patches, t, rope.cos, rope.sin, residual, *kv)
        for branch in branches:
            self.decisions[branch][step] = compute
        return dit.tokens_out(out, rope)

    # -- FBCache ----------------------------------------------------------------------------------

    def _first_block(self, dit, stream: TokenStream, text: TextKV, branches, rows: int, step: int):
        """Run block 0; per branch, reuse the rest of the stack if its residual barely changed."""
        after = dit.run_blocks(stream, text, stop=1)
        first = after.x - stream.x
        valid = _real_rows(dit, stream)  # padded rows (sequence parallelism) take no part
        decisions = []
        for j, branch in enumerate(branches):
            current = first[j * rows:(j + 1) * rows][:, valid]
            previous = self._first.get(branch)
            if previous is None:
                compute = True
            else:
                sums = torch.stack([(current - previous).abs().double().sum(), previous.abs().double().sum()])
                if self.sp_group is not None:
                    dist.all_reduce(sums, group=self.sp_group)
                change = float(sums[0] / sums[1]) if float(sums[1]) > 0 else float("inf")
                compute = not first_block_reuses(change, self.threshold)
            if compute:
                self._first[branch] = current
            decisions.append(compute)
        return after, decisions

    # -- helpers ----------------------------------------------------------------------------------

    def _stored(self, branch: int, step: int) -> torch.Tensor:
        residual = self._residual.get(branch)
        if residual is None:
            raise ValueError(f"step {step} of branch {branch} reuses the cache, but no earlier step computed it "
                             f"(a schedule must compute each branch's first step)")
        return residual

    def _record_residual(self, branch: int, residual: torch.Tensor) -> None:
        previous = self._residual.get(branch)
        if previous is not None:  # MagCache's signal: mean over tokens of |r_t| / |r_t-1|
            ratio = (residual.norm(dim=-1) / previous.norm(dim=-1)).mean()
            self.signals[branch]["residual_ratio"].append(float(ratio))

    def _record_output(self, branch: int, velocity: torch.Tensor) -> None:
        previous = self._last_output.get(branch)
        if previous is not None:  # TeaCache's fitting target: relative L1 change of the output
            change = (velocity - previous).abs().mean() / previous.abs().mean()
            self.signals[branch]["output_rel_l1"].append(float(change))
        self._last_output[branch] = velocity


def _real_rows(dit, stream: TokenStream) -> torch.Tensor:
    """Boolean [S_local] of this rank's rows that are real tokens (not sequence padding)."""
    index = torch.arange(stream.rope.seq_len, device=stream.x.device)
    if dit.shard_plan is not None:
        index = dit.shard_plan.shard(index, dim=0)
    return index < stream.rope.real_len
