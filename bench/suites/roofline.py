"""`--suite roofline`: the per-forward FLOP/byte breakdown of the DiT and VAE. Runs no model.

Prints `bench.roofline.format_cost_table` for one DiT forward (per sample, and at the run's batch
when it is not 1; GEMM bytes of the engine dtype), the VAE decode and the VAE encode, and records one row per component
(no timing; the floor column holds the time the measured or given ceilings allow).
"""
from __future__ import annotations

from ..roofline import dit_forward_cost, floor_seconds, format_cost_table, vae_decode_cost, vae_encode_cost
from .common import BenchContext, SuiteResult, make_row, single_cost

SUITE = "roofline"


def costs(ctx: BenchContext):
    """(case name, Cost) of the DiT forward, VAE decode and VAE encode at the run's sizes."""
    w, h, f = ctx.width, ctx.height, ctx.frames
    batches = (1,) if ctx.batch == 1 else (1, ctx.batch)
    dit = [(f"dit forward B{b}", dit_forward_cost(ctx.dit_config, w, h, f, b, dtype_bytes=ctx.dtype_bytes))
           for b in batches]
    fused = [(f"dit forward B{ctx.batch}, GELU in the GEMM epilogue",
              dit_forward_cost(ctx.dit_config, w, h, f, ctx.batch, dtype_bytes=ctx.dtype_bytes, fused_gelu=True))]
    return [*dit, *fused, ("vae decode", vae_decode_cost(ctx.model.vae, w, h, f, 1)),
            ("vae encode", vae_encode_cost(ctx.model.vae, w, h, f, 1))]


def gelu_bytes_saved(ctx: BenchContext) -> float:
    """Bytes per DiT forward that fusing the FFN GELU into its GEMM saves at the run's batch."""
    w, h, f = ctx.width, ctx.height, ctx.frames
    unfused = dit_forward_cost(ctx.dit_config, w, h, f, ctx.batch, dtype_bytes=ctx.dtype_bytes)
    return unfused.bytes - dit_forward_cost(ctx.dit_config, w, h, f, ctx.batch, dtype_bytes=ctx.dtype_bytes,
                                            fused_gelu=True).bytes


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult()
    ceilings = ctx.ceilings.roofline() if ctx.ceilings else None
    tables = []
    for case, cost in costs(ctx):
        tables.append(format_cost_table(cost, ceilings))
        for component in (*cost.components, None):
            name = "total" if component is None else component.name
            flops = cost.flops if component is None else component.flops
            nbytes = cost.bytes if component is None else component.bytes
            part = single_cost(name, flops, nbytes)
            row = make_row(ctx, SUITE, f"{case}: {name}", "analytic", None, shape=ctx.size_label,
                           dtype=f"{ctx.dtype_bytes}-byte" if case.startswith("dit") else "4-byte",
                           cost=part, note=cost.label if component is None else "")
            if ceilings is not None:
                row["floor_ms"] = 1e3 * floor_seconds(part, ceilings)
            result.rows.append(row)
    saved = gelu_bytes_saved(ctx)
    layers = ctx.dit_config.num_layers
    result.notes.append(f"roofline: the FFN GELU fused into its GEMM saves {saved / 1e9:.2f} GB per DiT forward "
                        f"at batch {ctx.batch} ({saved / layers / 1e9:.2f} GB per layer)")
    if ceilings is None:
        result.notes.append("roofline: no ceilings given, floor column empty (run another suite or pass "
                            "--tflops/--gbps)")
    result.text = "\n\n".join(tables)
    return result
