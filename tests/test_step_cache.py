"""Step caching in one process: the config and calibration files, the first-block rule on controlled
signals, threshold 0 bit for bit, the cached step's arithmetic, and the calibration fit."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import wan_engine
from wan_engine.cache import CacheConfig, Calibration, StepCache, published, resolve_calibration
from wan_engine.cache.calibration import FORMAT
from wan_engine.cache.fit import fit_calibration
from wan_engine.cache.published import MAGCACHE_IMAGE_RATIOS, MAGCACHE_RATIOS
from wan_engine.executor import RopeTable, TextKV, TokenStream

PROMPT = "a red kite above a grey sea"
REQUEST = dict(size=(48, 48), num_frames=9, steps=10, seed=4)


# --- CacheConfig -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("teacache:0.2", CacheConfig("teacache", 0.2)),
    ("teacache:0.2,ret_steps", CacheConfig("teacache", 0.2, ret_steps=True)),
    ("teacache", CacheConfig("teacache")),  # threshold None: the model's recommended one, else 0.2
    ("magcache:0.12,K=2,retention=0.2", CacheConfig("magcache", 0.12, max_skips=2, retention=0.2)),
    ("magcache:0.3,K=4", CacheConfig("magcache", 0.3, max_skips=4)),
    ("fbcache:0.05", CacheConfig("fbcache", 0.05)),
    ("fbcache:threshold=0", CacheConfig("fbcache", 0.0)),
])
def test_cache_specs_parse(text, expected):
    assert CacheConfig.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("deepcache:0.1", "cache policy must be one of teacache, magcache, fbcache"),
    ("teacache:-0.1", "cache threshold must be a finite number >= 0"),
    ("teacache:nan", "cache threshold must be a finite number >= 0"),
    ("teacache:fast", "cache threshold must be a number"),
    ("magcache:0.1,K=0", "cache K (max_skips) must be an int >= 1"),
    ("magcache:0.1,K=1.5", "cache K must be an int"),
    ("magcache:0.1,retention=1.5", "cache retention must be in [0, 1]"),
    ("fbcache:0.1,ret_steps", "ret_steps is a TeaCache option"),
    ("teacache:0.1,K=3", "K and retention are MagCache options"),
    ("teacache:0.1,speed=3", "--cache option 'speed=3' is not one of"),
    ("", "--cache must look like"),
])
def test_bad_cache_specs_name_the_parameter(text, message):
    with pytest.raises(ValueError) as err:
        CacheConfig.parse(text)
    assert message in str(err.value)


# --- calibrations ------------------------------------------------------------------------------

def test_published_calibrations_and_their_lookup():
    cal = published("t2v-1.3B")
    assert cal.teacache_coefficients(False)[0] == pytest.approx(2.39676752e+03)
    assert len(cal.magcache_ratios()[0]) == 50 and cal.magcache_ratios()[0][0] == 1.0
    assert published("shapes") is None
    ti2v = published("ti2v-5B")  # MagCache4Wan2.2's two lists: text-to-video, and image-to-video requests
    assert ti2v.teacache == {} and ti2v.magcache_ratios() == MAGCACHE_RATIOS["ti2v-5B"]
    assert ti2v.magcache_ratios(image=True) == MAGCACHE_IMAGE_RATIOS["ti2v-5B"] != ti2v.magcache_ratios()
    assert cal.magcache_ratios(image=True) == cal.magcache_ratios()  # one list serves both kinds of request
    assert len(published("t2v-A14B").magcache_ratios()[1]) == len(published("i2v-A14B").magcache_ratios()[0]) == 40
    assert published("t2v-A14B").thresholds == {"magcache": 0.06} and published("t2v-1.3B").thresholds == {}
    assert CacheConfig("magcache").with_default_threshold(published("ti2v-5B").thresholds).threshold == 0.06
    with pytest.raises(ValueError, match="no cache calibration for custom: pass --cache-calibration"):
        resolve_calibration(None, None, "custom")
    assert resolve_calibration("t2v-14B", None, "x").model == "t2v-14B"


def test_a_policy_without_a_threshold_takes_the_models_recommended_one_else_the_default():
    assert CacheConfig("teacache").with_default_threshold(None).threshold == 0.2
    assert CacheConfig("fbcache").with_default_threshold({"fbcache": 0.15}).threshold == 0.15
    assert CacheConfig("fbcache", 0.05).with_default_threshold({"fbcache": 0.15}).threshold == 0.05  # given wins
    shapes = wan_engine.WanPipeline.from_pretrained("shapes", device="cpu")
    assert shapes.cache_calibration.thresholds == {"teacache": 0.05, "fbcache": 0.22}
    result = shapes.run("a red circle moving left on a black background", steps=6, seed=0,
                        cache=CacheConfig("fbcache"))
    assert result.cache.policy == "fbcache 0.22"


def test_calibration_files_round_trip_and_refuse_what_is_not_one(tmp_path):
    cal = Calibration("m", "fitted", {"plain": (1.0, 2.0, 3.0, 4.0, 5.0)}, ((1.0, 0.9), (1.0, 0.8)), {"prompts": 2},
                      {"teacache": 0.1})
    path = cal.save(tmp_path / "sub" / "cal.json")
    back = Calibration.load(path)
    assert (back.teacache, back.magcache, back.fitted, back.thresholds) == (cal.teacache, cal.magcache, cal.fitted,
                                                                              cal.thresholds)
    assert not list(path.parent.glob(".*partial"))
    image = dataclasses.replace(cal, magcache_image=((1.0, 0.7), (1.0, 0.6)))
    assert Calibration.load(image.save(tmp_path / "image.json")) == dataclasses.replace(
        image, source=str(tmp_path / "image.json"))
    with pytest.raises(ValueError, match="has no TeaCache ret_steps coefficients"):
        back.teacache_coefficients(True)
    bad = tmp_path / "bad.json"
    for content, message in [("{", "not valid JSON"), ('{"format": "x"}', "not a cache calibration"),
                             (json.dumps({**cal.to_json(), "magcache": {"cond": [1.0, -2.0], "uncond": [1.0, 1.0]}}),
                              "finite positive numbers"),
                             (json.dumps({**cal.to_json(), "teacache": {"plain": ["a"]}}), "a list of numbers"),
                             (json.dumps({**cal.to_json(), "magcache_image": {"cond": [1.0]}}),
                              "magcache_image must be a JSON object holding exactly"),
                             (json.dumps({"format": FORMAT, "magcache_image": {"cond": [1.0], "uncond": [1.0]}}),
                              "magcache_image needs the text-to-video magcache ratios beside it")]:
        bad.write_text(content)
        with pytest.raises(ValueError, match=message):
            Calibration.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        Calibration.load(tmp_path / "missing.json")


def test_the_fit_recovers_known_ratios_and_a_known_polynomial():
    steps = 12
    x = np.linspace(0.01, 0.2, steps)
    poly = np.poly1d([30.0, -8.0, 2.0, 0.5, 0.05])
    runs = [{b: {"residual_ratio": list(np.full(steps - 1, 0.9 + 0.05 * b + 0.01 * k)),
                 "output_rel_l1": list(poly(x[1:]))} for b in (0, 1)} for k in (0, 2)]
    signals = {"plain": [0.0, *x[1:]], "ret_steps": [0.0, *x[1:]]}
    cal = fit_calibration(runs, signals, "m", {})
    assert cal.magcache[0] == (1.0,) + (0.91,) * (steps - 1)
    assert cal.magcache[1] == (1.0,) + (0.96,) * (steps - 1)
    assert np.allclose(cal.teacache["plain"], poly.coeffs, rtol=1e-6)


# --- the first-block rule on controlled signals ------------------------------------------------

class ControlledDiT:
    """A stand-in with the executor's interface to its stages: the tokens are x itself [B, S, D],
    block 0 adds `first[step]`, the rest add `rest[step]`, the head returns the stream."""

    shard_plan = None

    def __init__(self, first, rest, layers=3):
        self.first, self.rest, self.layers, self.step = first, rest, layers, 0
        self.blocks_run = 0

    def tokens_in(self, x, t, seq_len=None, y=None):
        s = x.shape[1]
        return x.clone(), RopeTable(torch.ones(s, 1), torch.zeros(s, 1), (1, 1, s), s, s)

    def embed(self, patches, t, rope):
        return self.stream_at(patches, t, rope, 0, None)

    def stream_at(self, x, t, rope, block, normed):
        z = torch.zeros(x.shape[0], 1)
        return TokenStream(x, normed, torch.zeros(self.layers, 6, x.shape[0], 1), z, z, rope.cos, rope.sin, rope,
                           block)

    def run_blocks(self, stream, text, stop=None):
        stop = self.layers if stop is None else stop
        x = stream.x
        for i in range(stream.next_block, stop):
            x = x + (self.first[self.step] if i == 0 else self.rest[self.step] / (self.layers - 1))
            self.blocks_run += stream.batch
        return stream.advanced(x, x, stop)  # normed: the stream itself

    def skip_blocks(self, stream, residual, stop=None):
        return stream.advanced(stream.x + residual, None, self.layers if stop is None else stop)

    def head(self, stream):
        return stream.x

    def tokens_out(self, out, rope):
        return out


def _official_first_block_cache(first, threshold):
    """ParaAttention's first-block cache: compare with the first block's residual of the last
    step that ran the rest (mean |r - r_prev| / mean |r_prev| < threshold reuses)."""
    decisions, previous = [], None
    for r in first:
        reuse = previous is not None and ((r - previous).abs().mean() / previous.abs().mean()).item() < threshold
        if not reuse:
            previous = r
        decisions.append(not reuse)
    return decisions


def test_first_block_cache_decides_as_the_published_rule_on_controlled_signals():
    torch.manual_seed(0)
    base = torch.randn(1, 6, 4)
    # Relative changes from the first step: 0, 2 %, 4 %, 30 %, 31 %, 33 %, 90 %, ...
    drift = [0.0, 0.02, 0.04, 0.30, 0.31, 0.33, 0.90, 0.91, 0.95, 1.6]
    first = [base * (1 + d) for d in drift]
    rest = [torch.full((1, 6, 4), float(i)) for i in range(len(drift))]
    x = torch.randn(1, 6, 4)
    text = TextKV(torch.zeros(3, 1, 1, 1, 1), torch.zeros(3, 1, 1, 1, 1))
    for threshold in (0.0, 0.03, 0.05, 0.1):
        dit = ControlledDiT(first, rest)
        cache = StepCache(len(drift), first_block_threshold=threshold)
        expected = _official_first_block_cache(first, threshold)
        last_computed = None
        for step in range(len(drift)):
            dit.step = step
            out = cache.predict(dit, x, torch.zeros(1), text, (0,), step)
            if expected[step]:
                last_computed = step
            # Reused steps carry the rest-of-stack residual of the last computed step.
            # (fp32 sums in another order: the fake splits the rest over two blocks)
            torch.testing.assert_close(out, x + first[step] + rest[last_computed], rtol=0, atol=1e-5)
        assert cache.decisions[0] == expected, threshold
        assert cache.decisions[1] == [None] * len(drift)  # that branch never ran
    # The transcription itself, worked by hand: changes are measured from the last computed step.
    assert _official_first_block_cache(first, 0.05) == [True, False, False, True, False, False, True, False, False,
                                                        True]


def test_branches_that_disagree_run_only_the_computing_one():
    torch.manual_seed(1)
    first = [torch.randn(1, 5, 3) for _ in range(3)]  # the same for every row: the fake knows no rows
    rest = [torch.randn(1, 5, 3) for _ in range(3)]
    dit = ControlledDiT(first, rest)
    cache = StepCache(3, schedule=[[True, True, False], [True, False, True]])
    text = TextKV(torch.zeros(3, 2, 1, 1, 1), torch.zeros(3, 2, 1, 1, 1))
    x = torch.randn(2, 5, 3)
    for step in range(3):
        dit.step = step
        before = dit.blocks_run
        out = cache.predict(dit, x, torch.zeros(2), text, (0, 1), step)
        assert dit.blocks_run - before == 3 * (1 if step else 2)  # rows x layers that ran
    # Step 2: branch 0 reuses step 1's residual of the whole stack, branch 1 computes.
    torch.testing.assert_close(out[0], x[0] + first[1][0] + rest[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], x[1] + first[2][0] + rest[2][0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no earlier step computed it"):
        StepCache(2, schedule=[[False, True], [True, True]]).predict(dit, x, torch.zeros(2), text, (0, 1), 0)


# --- the real pipeline ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipes():
    return {batch: wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", cfg_batch=batch)
            for batch in (True, False)}


@pytest.mark.parametrize("spec", ["teacache:0", "teacache:0,ret_steps", "magcache:0", "magcache:0,K=5,retention=0",
                                  "fbcache:0"])
@pytest.mark.parametrize("cfg_batch", [True, False], ids=["batched", "separate"])
def test_threshold_zero_is_the_uncached_video_bit_for_bit(pipes, spec, cfg_batch):
    pipe = pipes[cfg_batch]
    plain = pipe.run(PROMPT, **REQUEST, cache=None)
    cached = pipe.run(PROMPT, **REQUEST, cache=CacheConfig.parse(spec, calibration="t2v-1.3B"))
    assert np.array_equal(plain.frames, cached.frames)
    assert cached.cache.summary() == f"computed {REQUEST['steps']}/{REQUEST['steps']}"
    assert plain.cache is None


def test_a_cached_run_skips_what_its_schedule_says_and_both_cfg_modes_agree(pipes):
    cache = CacheConfig.parse("magcache:0.3,K=3,retention=0.1", calibration="t2v-1.3B")
    batched, separate = (pipes[b].run(PROMPT, **REQUEST, cache=cache) for b in (True, False))
    assert batched.cache.computed == separate.cache.computed
    assert batched.cache.counts()[0] < REQUEST["steps"]
    assert np.abs(batched.frames.astype(int) - separate.frames.astype(int)).max() <= 1  # fp32 batching order
    plain = pipes[True].run(PROMPT, **REQUEST, cache=None)
    assert not np.array_equal(plain.frames, batched.frames)  # skipping changed something: the cache acted


def test_the_pipeline_refuses_a_cache_it_cannot_run():
    reference = wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="reference")
    with pytest.raises(ValueError, match="step caching needs the executor engine"):
        reference.run(PROMPT, **REQUEST, cache=CacheConfig("fbcache", 0.1))
    with pytest.raises(ValueError, match="no cache calibration for tiny"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu").run(PROMPT, **REQUEST,
                                                                         cache=CacheConfig("teacache"))
    with pytest.raises(ValueError, match="cache must be a CacheConfig"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="cpu").run(PROMPT, **REQUEST, cache="teacache:0.2")


def test_calibrate_runs_image_models_from_their_first_frames(tmp_path, capsys, monkeypatch):
    """An i2v model calibrates from given first frames (refused without them, naming the option);
    a TI2V model fits its text ratios and, given images, its image-request ratios apart."""
    from PIL import Image

    from wan_engine.cli import main
    from wan_engine.pipelines.calibrate import calibrate_pipeline

    rng = np.random.default_rng(0)
    images = [str(tmp_path / f"{i}.png") for i in range(2)]
    for path in images:
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(path)
    small = dict(steps=4, size=(32, 32), num_frames=5)
    ti2v = wan_engine.WanPipeline.from_pretrained("tiny-ti2v", device="cpu")
    text = calibrate_pipeline(ti2v, ["a cat", "a dog"], **small)
    lines = []
    both = calibrate_pipeline(ti2v, ["a cat", "a dog"], images=images, progress=lines.append, **small)
    # One count over the text runs and then the image runs.
    assert [line.split(":")[0] for line in lines] == [f"[calibrate] {i}/4" for i in range(1, 5)]
    assert lines[2].endswith("'a cat' with its image seed 0")
    assert text.magcache_image is None and both.magcache == text.magcache and both.teacache == text.teacache
    assert len(both.magcache_image[0]) == 4 and both.magcache_image != both.magcache
    assert both.fitted["images"] == 2
    with pytest.raises(ValueError, match="images: a text-to-video model calibrates from its prompts alone"):
        calibrate_pipeline(wan_engine.WanPipeline.from_pretrained("tiny", device="cpu"), ["a"], images=images)
    i2v = ["calibrate", "--model", "tiny-i2v", "--prompts", str(tmp_path / "p.txt"), "--steps", "4",
           "--size", "32x32", "--frames", "5", "--output"]
    (tmp_path / "p.txt").write_text("a cat\n")
    with monkeypatch.context() as patch:  # a preset's missing images are refused before the load
        patch.setattr(wan_engine.WanPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
        assert main([*i2v, str(tmp_path / "none.json")]) == 2
    assert "images: an i2v model generates from a first frame" in capsys.readouterr().err
    assert not (tmp_path / "none.json").exists()
    assert main([*i2v, str(tmp_path / "i2v.json"), "--images", *images]) == 0
    assert len(Calibration.load(tmp_path / "i2v.json").magcache[1]) == 4
    flf2v = [a if a != "tiny-i2v" else "tiny-flf2v" for a in i2v]
    assert main([*flf2v, str(tmp_path / "none.json"), "--images", images[0]]) == 2
    assert "last_images: an flf2v model generates between a first and a last frame" in capsys.readouterr().err
    assert main([*flf2v, str(tmp_path / "flf2v.json"), "--images", images[0], "--last-images", images[1]]) == 0
    assert len(Calibration.load(tmp_path / "flf2v.json").magcache[0]) == 4


# --- command line --------------------------------------------------------------------------------

def test_calibrate_then_generate_with_the_calibration(tmp_path, capsys):
    from wan_engine.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n\na blue boat\n")
    cal = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "tiny", "--output", str(cal), "--prompts", str(prompts), "--steps", "6",
                 "--size", "32x32", "--frames", "5"]) == 0
    loaded = Calibration.load(cal)
    assert set(loaded.teacache) == {"plain", "ret_steps"} and len(loaded.magcache[0]) == 6
    assert loaded.fitted["prompts"] == 2 and loaded.fitted["steps"] == 6
    capsys.readouterr()
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny", "--prompt", "a red kite", "--steps", "6", "--size", "32x32",
                 "--frames", "5", "--cache", "magcache:0.5,K=3,retention=0", "--cache-calibration", str(cal),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cache: computed " in printed and f"calibration {cal}" in printed and out.is_file()


@pytest.mark.parametrize("argv, message", [
    (["--cache", "teacache:-1"], "cache threshold must be a finite number >= 0"),
    (["--cache-calibration", "x.json"], "--cache-calibration needs --cache"),
    (["--cache", "teacache:0.2"], "no cache calibration for tiny"),
])
def test_generate_refuses_bad_cache_options(tmp_path, capsys, argv, message):
    from wan_engine.cli import main

    assert main(["generate", "--model", "tiny", "--prompt", "x", "--output", str(tmp_path / "v.mp4"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()


def test_the_executor_reusing_a_residual_stands_in_for_its_blocks(pipes):
    """skip_blocks(begin(x), residual) with the residual the blocks added at the same step is the
    full forward (up to fp32 rounding of x + (y - x)); `finish` after either gives the same velocity."""
    dit = pipes[True].dit
    gen = torch.Generator().manual_seed(9)
    x, t = torch.randn(2, 16, 3, 6, 6, generator=gen), torch.tensor([700.0, 300.0])
    text = dit.prepare_text(torch.randn(2, 12, dit.config.text_dim, generator=gen))
    with torch.no_grad():
        stream = dit.begin(x, t)
        full = dit.run_blocks(stream, text)
        reused = dit.skip_blocks(stream, full.x - stream.x)
        torch.testing.assert_close(dit.finish(reused), dit.finish(full), rtol=1e-5, atol=1e-5)
        assert torch.equal(dit.finish(full), dit.predict(x, t, text))  # the stages are the forward
    with pytest.raises(ValueError, match="residual must have the stream's shape"):
        dit.skip_blocks(stream, full.x[:1])
