"""Choose a trained shapes preset's recommended step-cache thresholds on a selection set.

    python scripts/select_cache_thresholds.py --model shapes-a14b \
        --candidates magcache:0.06 magcache:0.08 magcache:0.10 magcache:0.12 fbcache:0.15 fbcache:0.2

The selection set is the cache bench's 48 prompts (24 held-out, 24 seen) at seed 1; the bench scores
seed 0, so the thresholds are not chosen on the clips that judge them. Per policy, the largest
candidate whose adherence scores all stay within the bench's 5 points of the uncached clips wins.
It prints the table and the choice (exit status 1 when no candidate qualifies); writing it into the model's cache_calibration.json
("thresholds") is left to the user, with the choice's provenance in "fitted".
"""
from __future__ import annotations

import argparse
import sys

SEED = 1


def main(argv=None) -> int:
    from wan_engine.bench.suites.adherence import prompt_sets
    from wan_engine.bench.suites.cache import MAX_ADHERENCE_DROP, PROMPTS_PER_SET, _adherence
    from wan_engine.cache import CacheConfig
    from wan_engine.configs import SHAPES_PRESETS
    from wan_engine.pipelines.t2v import WanPipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=SHAPES_PRESETS, required=True)
    p.add_argument("--candidates", nargs="+", required=True, metavar="POLICY:THRESHOLD")
    p.add_argument("--prompts-per-set", type=int, default=PROMPTS_PER_SET,
                   help=f"held-out and seen prompts each (default: the bench's {PROMPTS_PER_SET})")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    args = p.parse_args(argv)
    if not 1 <= args.prompts_per_set <= PROMPTS_PER_SET:
        p.error(f"--prompts-per-set must be in [1, {PROMPTS_PER_SET}], got {args.prompts_per_set}")
    candidates = [CacheConfig.parse(spec) for spec in args.candidates]
    if any(c.threshold is None for c in candidates):
        p.error("every candidate needs a threshold (POLICY:THRESHOLD)")
    pipe = WanPipeline.from_pretrained(args.model)
    sets = prompt_sets()
    prompts = [(name, combo) for name in ("held-out", "seen") for combo in sets[name][:args.prompts_per_set]]
    steps = args.steps or pipe.config.sample.steps

    def scores(cache):
        frames, forwards = [], []
        for _, combo in prompts:
            result = pipe.run(combo.caption, seed=SEED, steps=steps, cache=cache)
            frames.append(result.frames)
            forwards.append(sum(result.cache.counts()) / 2 if result.cache else steps)
        return _adherence(frames, prompts), sum(forwards) / len(forwards)

    base, _ = scores(None)
    print(f"uncached: {_fmt(base)}, {steps} forwards per branch", flush=True)
    chosen = {}
    for cache in candidates:
        score, forwards = scores(cache)
        ok = all(base[k] - score[k] <= MAX_ADHERENCE_DROP + 1e-9 for k in base)
        print(f"{cache.describe()}: {_fmt(score)}, {forwards:.1f} forwards ({steps / forwards:.2f}x fewer) "
              f"{'within' if ok else 'OUTSIDE'} {100 * MAX_ADHERENCE_DROP:.0f} points", flush=True)
        if ok and cache.threshold > chosen.get(cache.policy, -1.0):
            chosen[cache.policy] = cache.threshold
    print(f"chosen: {chosen}")
    return 0 if chosen else 1


def _fmt(score: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f} %" for k, v in score.items())


if __name__ == "__main__":
    sys.exit(main())
