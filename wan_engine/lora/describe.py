"""`wan-engine info LORA_FILE`: a LoRA file's format, ranks, targets and coverage, without a model."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..loading.lora_format import Diff, LowRank, parse_lora

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
# The GEMM weights of one Wan2.1 block (t2v; i2v adds cross_attn.k_img / v_img).
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def describe_lora(path: str | Path) -> str:
    lora = parse_lora(path)
    blocks: set[int] = set()
    lowrank, full = Counter(), Counter()
    top: set[str] = set()
    alphas = set()
    for name, parts in lora.targets.items():
        match = _BLOCK.fullmatch(name)
        if match:
            blocks.add(int(match.group(1)))
            kind = match.group(2)
        else:
            kind = name
            top.add(name)
        for part in parts:
            if isinstance(part, LowRank):
                lowrank[kind.removesuffix(".weight")] += 1
                alphas.add(part.alpha)
            elif isinstance(part, Diff):
                full[kind] += 1
    n_blocks = max(blocks, default=-1) + 1
    linears = [m for m in BLOCK_LINEARS if lowrank.get(m)] + sorted(
        m for m in lowrank if m not in BLOCK_LINEARS and not m.startswith(tuple(top)))
    ranks = lora.ranks
    alpha_text = ", ".join("none (scale 1)" if a is None else f"{a:g}" for a in sorted(alphas, key=lambda a: a or 0))
    lines = [
        f"{'file':>13}: {path}",
        f"{'format':>13}: {lora.format}",
        f"{'rank':>13}: {', '.join(map(str, ranks)) if ranks else '- (full deltas only)'}"
        + (f"; alpha {alpha_text}" if alphas else ""),
        f"{'blocks':>13}: {len(blocks)} of {n_blocks} (0..{n_blocks - 1})" if blocks else f"{'blocks':>13}: none",
        f"{'low-rank':>13}: " + (", ".join(f"{m} x{lowrank[m]}" for m in linears) or "none"),
        f"{'coverage':>13}: {sum(1 for m in BLOCK_LINEARS if lowrank.get(m))}/{len(BLOCK_LINEARS)} block linear "
        f"layers (t2v), {sum(lowrank.values())} low-rank weights in all",
        f"{'full deltas':>13}: " + (", ".join(f"{k} x{v}" for k, v in sorted(full.items())) or "none"),
        f"{'outside blocks':>13}: " + (", ".join(sorted(top)) or "none"),
        f"{'unmatched':>13}: {len(lora.unmatched)} of {lora.num_keys} keys"
        + (": " + ", ".join(lora.unmatched[:8]) + (" ..." if len(lora.unmatched) > 8 else "") if lora.unmatched else ""),
    ]
    return "\n".join(lines)
