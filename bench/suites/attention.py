"""`--suite attention`: every attention backend that can run here, at the model's shapes.

Cases: self-attention over the video tokens (q, k, v `[B, S, H, D]`) and text cross-attention
(k/v over text_len tokens), in the engine dtype. Oracle: float64 softmax attention, computed
for an evenly spaced subset of at most 256 query rows (all rows at small sizes) so the oracle
fits in memory at 32,760 tokens; each backend's output on those rows is compared with it.
FLOPs are the two GEMMs (4 * B * Sq * Sk * H * D); bytes are q, k, v read and o written once.

Each backend is judged by `bench.bounds.attention_bound`: at most twice the error of plain
attention in the engine dtype (scores, softmax and PV each rounded to it, on the same rows) plus
one rounding. A backend that resolves but raises is a FAIL row; one that cannot run here (a
package not installed, a dtype it lacks) is a note. `auto` is resolved like the executor does
it (a probe on CUDA) and its choice and timings are reported.
"""
from __future__ import annotations

import torch

from wan_engine.attention import AUTO, BACKENDS, AttentionBackendError, resolve_attention_backend

from ..accuracy import compare_tensors
from ..bounds import attention_bound
from ..roofline import dit_tokens
from ..timing import measure
from .common import (
    BenchContext, SuiteResult, crash_row, dtype_name, generator, make_row, release_memory, single_cost,
)

SUITE = "attention"
ORACLE_ROWS = 256
MATH_SCORES_LIMIT_BYTES = 2 << 30  # the math backend materializes fp32 scores [B, H, Sq, Sk]


def oracle_rows(seq: int, limit: int = ORACLE_ROWS) -> torch.Tensor:
    """Evenly spaced query indices, at most `limit`, always including the first and last."""
    if seq <= limit:
        return torch.arange(seq)
    return torch.linspace(0, seq - 1, limit).round().long().unique()


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 softmax(q k^T / sqrt(D)) v on [B, S, H, D] layouts, one batch entry at a time."""
    outs = []
    for b in range(q.shape[0]):
        qb, kb, vb = (t[b].double().transpose(0, 1) for t in (q, k, v))  # [H, S, D]
        scores = qb @ kb.transpose(1, 2) / q.shape[-1] ** 0.5
        outs.append((scores.softmax(-1) @ vb).transpose(0, 1))
    return torch.stack(outs)


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v with every intermediate in q's dtype: the yardstick of what an
    attention computed straightforwardly in that dtype gets (one batch entry at a time)."""
    outs = []
    for b in range(q.shape[0]):
        qb, kb, vb = (t[b].transpose(0, 1) for t in (q, k, v))  # [H, S, D]
        scores = (qb @ kb.transpose(1, 2)) * q.shape[-1] ** -0.5
        outs.append((scores.softmax(-1) @ vb).transpose(0, 1))
    return torch.stack(outs)


def cases(ctx: BenchContext) -> list[tuple[str, int, int]]:
    """(case, Sq, Sk) of self-attention and text cross-attention at the run's video size."""
    cfg = ctx.dit_config
    s = dit_tokens(cfg, ctx.width, ctx.height, ctx.frames)
    return [("self-attention", s, s), ("cross-attention", s, cfg.text_len)]


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    head_dim = ctx.dit_config.head_dim
    backends = {}
    for name in BACKENDS:
        if name in AUTO:
            continue
        try:
            backends[name] = resolve_attention_backend(name, ctx.device, ctx.dtype, head_dim)
        except AttentionBackendError as err:
            result.notes.append(f"attention backend {name}: skipped (unavailable: {str(err).split(';')[0]})")
    try:
        auto = resolve_attention_backend("auto", ctx.device, ctx.dtype, head_dim)
        result.notes.append(f"attention: 'auto' resolves to {auto.describe()}")
    except Exception as err:  # noqa: BLE001 - the engine's default failing to resolve is a failure
        result.rows.append(crash_row(ctx, SUITE, "resolve", "auto", err, dtype=dtype_name(ctx.dtype)))

    for case, sq, sk in cases(ctx):
        _run_case(ctx, result, backends, case, sq, sk)
        release_memory(ctx.device)
    return result


def _run_case(ctx: BenchContext, result: SuiteResult, backends: dict, case: str, sq: int, sk: int) -> None:
    cfg = ctx.dit_config
    heads, head_dim, batch = cfg.num_heads, cfg.head_dim, ctx.batch
    gen = generator(ctx, 200)
    q = torch.randn(batch, sq, heads, head_dim, generator=gen, device=ctx.device).to(ctx.dtype)
    k = torch.randn(batch, sk, heads, head_dim, generator=gen, device=ctx.device).to(ctx.dtype)
    v = torch.randn(batch, sk, heads, head_dim, generator=gen, device=ctx.device).to(ctx.dtype)
    rows = oracle_rows(sq).to(ctx.device)
    oracle = exact_attention(q[:, rows], k, v)
    bound = attention_bound(ctx.dtype, compare_tensors(plain_attention(q[:, rows], k, v), oracle)["rel_l2"])
    cost = single_cost(case, 4 * batch * sq * sk * heads * head_dim,
                       ctx.dtype_bytes * batch * heads * head_dim * 2 * (sq + sk))
    shape = f"B{batch} Sq{sq} Sk{sk} H{heads} D{head_dim}"
    for name, backend in backends.items():
        if name == "math" and batch * heads * sq * sk * 4 > MATH_SCORES_LIMIT_BYTES:
            result.notes.append(f"attention math backend skipped for {case}: its score matrix would need "
                                f"{batch * heads * sq * sk * 4 / 2**30:.1f} GiB")
            continue
        try:
            stats, out = measure(lambda: backend(q, k, v), ctx.device, ctx.repeats, ctx.warmup)
        except Exception as err:  # noqa: BLE001 - it resolved for this device and dtype: a crash fails
            result.rows.append(crash_row(ctx, SUITE, case, name, err, shape=shape, dtype=dtype_name(ctx.dtype),
                                         attention=name))
            continue
        result.rows.append(make_row(
            ctx, SUITE, case, name, stats, shape=shape, dtype=dtype_name(ctx.dtype), cost=cost,
            accuracy=compare_tensors(out[:, rows], oracle), oracle=f"fp64 softmax on {rows.numel()} query rows",
            bound=bound, attention=name))
        del out
