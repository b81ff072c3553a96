"""Bad input from a user's seat: each is refused with a message naming the parameter, the CLI
prints no traceback and leaves no file behind. Complements the basic cases in test_pipeline.py."""
from __future__ import annotations

import re

import pytest

import wan_engine
from wan_engine.cli import main as cli_main


@pytest.fixture(scope="module")
def pipe():
    return wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine="reference")


def cli_refuses(capsys, args: list[str], match: str, rc: int = 2) -> str:
    """Run the CLI, expect exit code `rc` and `match` in a one-line error without a traceback."""
    assert cli_main(args) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, err), err
    return err


@pytest.mark.parametrize("kwargs, match", [
    # inf guidance used to run and return an all-black video (NaN latents)
    (dict(guidance=float("inf")), "guidance must be finite"),
    (dict(guidance="strong"), "guidance must be a number"),
    (dict(guidance=[5.0]), "guidance must be a number"),
    (dict(shift=float("inf")), "shift must be finite"),
    (dict(shift="x"), "shift must be a number"),
    # a fractional size used to be truncated silently (and reported as the truncated value)
    (dict(size=(40.7, 32)), "size must be two integers"),
    (dict(size="32x32"), "size must be two integers"),
    (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=True), "seed must be an integer"),
    (dict(seed=1.0), "seed must be an integer"),
    (dict(negative_prompt=3), "negative_prompt must be a string"),
])
def test_api_refuses_bad_requests_naming_the_parameter(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe.make_request("a cat", **kwargs)


def test_api_accepts_the_edges_of_the_ranges(pipe):
    req = pipe.make_request("a cat", size=(16, 16), guidance=0, shift=1e-3, seed=2**63 - 1)
    assert (req.width, req.height, req.guidance, req.seed) == (16, 16, 0.0, 2**63 - 1)


@pytest.mark.parametrize("args, match", [
    (["--guidance", "inf"], "guidance must be finite"),
    (["--shift", "inf"], "shift must be finite"),
    (["--seed", str(2**63)], r"--seed must be in \[0, 2\*\*63\)"),
])
def test_cli_refuses_non_finite_and_out_of_range_numbers_before_loading(tmp_path, capsys, args, match):
    out = tmp_path / "x.mp4"
    # A model that does not exist: the option must be refused before the load is even tried.
    cli_refuses(capsys, ["generate", "--model", str(tmp_path / "absent"), "--prompt", "p", "--output", str(out),
                         *args], match)
    assert not out.exists()


def test_unknown_device_is_a_message_not_a_traceback(capsys):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        wan_engine.WanPipeline.from_pretrained("tiny", device="tpu")
    cli_refuses(capsys, ["generate", "--prompt", "p", "--device", "tpu"], "device must be")
    cli_refuses(capsys, ["bench", "--suite", "roofline", "--model", "tiny", "--device", "gpu0", "--no-write"],
                "device must be")
