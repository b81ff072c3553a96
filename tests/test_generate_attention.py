"""`wan-engine generate` names the attention backend the DiT ran on (WanPipeline.attention_backend):
the concrete backend and how "auto" chose it, or torch SDPA inside the eager reference."""
import pytest

from wan_engine.cli import main as cli_main

TINY_RUN = ["generate", "--model", "tiny", "--prompt", "a kite", "--size", "32x32", "--frames", "1",
            "--steps", "1", "--seed", "0", "--device", "cpu"]


@pytest.mark.parametrize("args, line", [
    ([], "attention: sdpa (auto: order sdpa)"),  # the CPU has one candidate: nothing to probe
    (["--attention", "math"], "attention: math"),
    (["--engine", "reference"], "attention: reference (torch sdpa)"),
])
def test_generate_prints_the_attention_backend(tmp_path, capsys, args, line):
    assert cli_main([*TINY_RUN, "--output", str(tmp_path / "clip.mp4"), *args]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"  {line}" in printed, printed
