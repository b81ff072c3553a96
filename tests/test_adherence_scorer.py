"""The prompt-adherence scorer on clips of the world generator, whose answers are known."""
import numpy as np
import pytest

from wan_engine.bench.adherence import accuracy, read_clip, score
from wan_engine.pipelines.t2v import frames_to_uint8
from wan_engine.shapes.world import Combo, all_combos, make_clip


def _frames(combo, seed, size=(96, 96), frames=17):
    return frames_to_uint8(make_clip(combo, size=size, frames=frames, seed=seed))


def test_every_combination_is_read_correctly():
    wrong = []
    for i, combo in enumerate(all_combos()):
        s = score(read_clip(_frames(combo, seed=i, size=(64, 48), frames=9)), combo)
        if not all(s.values()):
            wrong.append((combo.caption, s))
    assert not wrong, wrong[:5]


def test_reading_degrades_to_none_not_to_a_guess():
    still = np.full((9, 32, 32, 3), 128, dtype=np.uint8)  # a gray background, nothing on it
    reading = read_clip(still)
    assert reading.background == "gray" and reading.color is None and reading.direction is None
    frames = _frames(Combo("red", "circle", "up", "black"), seed=0, frames=9)
    frozen = np.repeat(frames[:1], 9, axis=0)  # the shape does not move
    reading = read_clip(frozen)
    assert reading.color == "red" and reading.direction is None and reading.travel_px < 1


def test_noise_and_blur_do_not_change_the_reading():
    """Generated videos are not clean renders: mild noise and a darker colour still read right."""
    combo = Combo("cyan", "triangle", "left", "white")
    frames = _frames(combo, seed=4).astype(np.float64)
    rng = np.random.default_rng(0)
    noisy = np.clip(frames * 0.9 + rng.normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
    assert all(score(read_clip(noisy), combo).values())


def test_wrong_answers_are_scored_wrong_and_accuracy_counts():
    frames = _frames(Combo("blue", "square", "down", "gray"), seed=1)
    s = score(read_clip(frames), Combo("yellow", "square", "up", "black"))
    assert s == dict(color=False, background=False, direction=False)
    assert accuracy([dict(color=True, background=True, direction=False),
                     dict(color=True, background=False, direction=False)]) == dict(
        color=1.0, background=0.5, direction=0.0)


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        read_clip(np.zeros((3, 16, 16, 3), dtype=np.float32))
