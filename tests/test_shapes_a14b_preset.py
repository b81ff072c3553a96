"""The `shapes-a14b` preset: the trained shapes DiT as two Wan2.2-style experts (wan_engine/shapes/experts.py).

It loads from the package in the Wan2.2 A14B original layout, its experts are two different DiTs
sharing the shapes model's VAE and text encoder, a generated clip follows its prompt's background
and motion, and its shipped calibration drives MagCache's two-expert rule. The quality of the step
caches on it comes from `wan-engine bench --suite cache --model shapes-a14b`.
"""
from __future__ import annotations

import pytest
import torch

import wan_engine
from wan_engine.assembly.pipeline import embedded_weights
from wan_engine.bench.adherence import read_clip
from wan_engine.cache import CacheConfig
from wan_engine.configs import get_preset
from wan_engine.reference.schedulers import make_solver
from wan_engine.shapes.world import HELD_OUT

PRESET = get_preset("shapes-a14b")


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("shapes-a14b", device="cpu")


def test_the_preset_loads_two_trained_experts_beside_the_shapes_vae_and_text_encoder(pipe):
    root, shapes = embedded_weights("shapes-a14b"), embedded_weights("shapes")
    assert pipe.config.name == "shapes-a14b" and pipe.config.experts == PRESET.experts
    assert pipe.config.sample == PRESET.sample and pipe.low_noise_dit is not None
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        assert (root / name).read_bytes() == (shapes / name).read_bytes()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 40 * 2 ** 20  # a few MB, shipped in the package
    from wan_engine.assembly import load_dit

    high, low = (load_dit(root / name).state_dict() for name in ("high_noise_model", "low_noise_model"))
    base = load_dit(shapes).state_dict()
    assert all(v.dtype == torch.bfloat16 for v in high.values())  # as the official A14B release ships them
    changed = [k for k in base if not torch.equal(high[k].float(), low[k].float())]
    assert len(changed) > len(base) // 2  # two experts, not one DiT twice
    assert any(not torch.equal(high[k].float(), base[k].to(torch.bfloat16).float()) for k in base)


@pytest.mark.parametrize("combo", [HELD_OUT[1], HELD_OUT[7]], ids=lambda c: c.caption.replace(" ", "-"))
def test_a_generated_clip_has_its_prompts_background_and_motion(pipe, combo):
    reading = read_clip(pipe.generate(combo.caption, seed=0))
    assert reading.background == combo.background, reading
    assert reading.direction == combo.direction, reading
    assert reading.color is not None


def test_its_calibration_drives_magcache_across_the_switch(pipe):
    """The shipped calibration holds MagCache ratios for the preset's 25 steps over both experts
    (no TeaCache: refused on two experts); `--cache magcache` reuses steps of both experts and
    computes the first step of each."""
    result = pipe.run(HELD_OUT[3].caption, seed=0, cache=CacheConfig.parse("magcache"))
    report = result.cache
    assert str(report.calibration).endswith("weights_a14b/cache_calibration.json")
    steps = PRESET.sample.steps
    switch = PRESET.experts.first_low_noise_step(make_solver("unipc", steps, PRESET.sample.shift).timesteps)
    assert switch == 11  # the first 11 of 25 steps at or above t = 875 (README)
    for branch in report.computed:
        assert branch[0] and branch[switch], report.schedule_text()
        assert not all(branch[:switch]) and not all(branch[switch:]), report.schedule_text()
    with pytest.raises(ValueError, match="teacache.s polynomial belongs to one DiT"):
        pipe.run(HELD_OUT[3].caption, seed=0, cache=CacheConfig.parse("teacache"))


def test_the_threshold_selection_keeps_the_largest_candidate_within_the_bound():
    """scripts/select_cache_thresholds.py: threshold 0 is the uncached video (within the bound);
    reusing nearly every step (a huge threshold, K 24, no retention) ruins the clips (outside)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "select_cache_thresholds.py"
    out = subprocess.run([sys.executable, str(script), "--model", "shapes-a14b", "--prompts-per-set", "2",
                          "--steps", "8", "--candidates", "fbcache:0", "magcache:0",
                          "magcache:1000,K=24,retention=0"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("magcache 1000") and "OUTSIDE" in line for line in lines), out.stdout
    assert lines[-1] == "chosen: {'fbcache': 0.0, 'magcache': 0.0}", out.stdout
