"""CPU checks for failures that would otherwise first show on the lent GPU machine.

That machine has torch, triton, transformers, onnx, onnxruntime, httpx, pytest and pytest-timeout,
but not diffusers, ftfy, imageio-ffmpeg, PyAV, flash-attn, TensorRT or the serve extra, and no
network to install them (tests/gpu_image.py).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gpu_image import MISSING_ON_GPU_IMAGE, SERVE_EXTRA_MODULES
from wan_engine.reference.schedulers import SOLVER_NAMES, make_solver
from wan_engine.runner import cfg_denoise

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run_without_gpu_image_packages(code: str) -> subprocess.CompletedProcess:
    prelude = f"import sys\nfor name in {MISSING_ON_GPU_IMAGE!r}:\n    sys.modules[name] = None\n"
    # -P: the repository root (cwd) stays off sys.path, as in scripts/test.sh.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return subprocess.run([sys.executable, *safe_path, "-c", prelude + code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_gpu_tests_collect_without_the_packages_the_gpu_image_lacks():
    """`bench/gpu_check.sh` runs `pytest -m "gpu or multigpu" tests/`: one module that fails to
    import there is a collection error, and then not a single GPU test runs."""
    child = _run_without_gpu_image_packages(
        "import pytest\n"
        "sys.exit(pytest.main(['--collect-only', '-q', '-m', 'gpu or multigpu', 'tests', "
        "'-p', 'no:cacheprovider']))\n")
    output = child.stdout + child.stderr
    assert child.returncode in (0, 5), f"collection failed (exit {child.returncode}):\n{output[-3000:]}"
    assert "error" not in output.splitlines()[-1].lower(), output[-3000:]


HAND_ORACLE_TESTS = (
    "tests/test_reference_dit.py::test_sinusoid_is_float64_cos_then_sin",
    "tests/test_reference_dit.py::test_rope_real_table_equals_complex_rope",
    "tests/test_reference_dit.py::test_patchify_matches_conv_and_unpatchify_layout",
    "tests/test_reference_dit.py::test_key_maps_round_trip",
    "tests/test_reference_vae.py::test_key_map_round_trip",
    "tests/test_reference_vae.py::test_chunked_decode_equals_whole_clip",
)


def test_hand_oracle_tests_run_without_diffusers():
    """Only the comparisons with diffusers may skip on the GPU image; the hand-written oracles
    (sinusoid, RoPE, patchify, key maps, the VAE's chunking) must run there."""
    files = sorted({t.split("::")[0] for t in HAND_ORACLE_TESTS})
    ids = [t.split("::")[1] for t in HAND_ORACLE_TESTS]
    child = _run_without_gpu_image_packages(
        "import pytest\n"
        f"sys.exit(pytest.main([*{files!r}, '-q', '-rs', '-p', 'no:cacheprovider', '-k', {' or '.join(ids)!r}]))\n")
    output = child.stdout + child.stderr
    assert child.returncode == 0, output[-3000:]
    summary = output.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1]) if " passed" in summary else 0
    assert passed >= len(HAND_ORACLE_TESTS) and "skipped" not in summary, summary
    assert "diffusers" not in output.split("short test summary")[-1], output[-3000:]


def test_every_module_imports_without_the_packages_the_gpu_image_lacks():
    """Optional packages are imported where they are used, never at module level (the benchmark
    suites skip diffusers rows, the video writer needs imageio-ffmpeg only when it writes)."""
    child = _run_without_gpu_image_packages(
        "import importlib, pkgutil\n"
        "failed = []\n"
        "for root in ('wan_engine', 'wan_engine.bench', 'wan_engine.kernels', 'wan_engine.parallel'):\n"
        "    for info in pkgutil.walk_packages(importlib.import_module(root).__path__, root + '.'):\n"
        "        leaf = info.name.rsplit('.', 1)[-1]\n"
        "        if leaf == '__main__' or leaf.startswith('test_'):  # entry points run, tests collect\n"
        "            continue\n"
        "        try:\n"
        "            importlib.import_module(info.name)\n"
        "        except ModuleNotFoundError as err:\n"
        f"            if info.name not in {SERVE_EXTRA_MODULES!r}:\n"
        "                failed.append(f'{info.name}: {type(err).__name__}: {err}')\n"
        "        except Exception as err:\n"
        "            failed.append(f'{info.name}: {type(err).__name__}: {err}')\n"
        "print('imported; failures:', failed)\n")
    assert child.returncode == 0, child.stderr[-3000:]
    assert "imported; failures: []" in child.stdout, child.stdout[-3000:]


def test_serve_without_the_serve_extra_names_what_to_install():
    child = _run_without_gpu_image_packages(
        "from wan_engine.cli import main\n"
        "sys.exit(main(['serve', '--model', 'tiny']))\n")
    assert child.returncode == 2, child.stdout + child.stderr[-3000:]
    assert "serve needs the serve extra" in child.stderr and "wan_engine[serve]" in child.stderr, child.stderr[-3000:]

def test_prompt_cleaning_without_ftfy_fails_naming_it():
    """The text encoder imports without ftfy, but cleaning a prompt (which the official cleaner
    always runs ftfy for) refuses rather than silently producing other tokens."""
    child = _run_without_gpu_image_packages(
        "from wan_engine.reference.text_encoder import TextEncoder\n"
        "from wan_engine.reference.tokenizer import clean_prompt\n"
        "try:\n"
        "    clean_prompt('a corgi')\n"
        "except ImportError as err:\n"
        "    print('ImportError:', err)\n")
    assert child.returncode == 0, child.stderr[-3000:]
    assert "ImportError:" in child.stdout and "ftfy" in child.stdout, child.stdout + child.stderr


def test_a_gpu_test_pipeline_runs_without_ftfy_once_cleaning_is_off():
    """The GPU tests that run a pipeline (graphs against eager, offload memory) turn the prompt
    cleaning off with `without_prompt_cleaning`; without it the run raises for the missing ftfy."""
    child = _run_without_gpu_image_packages(
        "sys.path.insert(0, 'tests')\n"
        "import wan_engine\n"
        "from gpu_image import without_prompt_cleaning\n"
        "pipe = wan_engine.WanPipeline.from_pretrained('tiny', device='cpu')\n"
        "kw = dict(size=(32, 32), num_frames=1, steps=1, seed=0)\n"
        "try:\n"
        "    pipe.run('a red kite', **kw)\n"
        "except ImportError as err:\n"
        "    print('cleaning needs ftfy:', 'ftfy' in str(err))\n"
        "print('frames', without_prompt_cleaning(pipe).run('a red kite', **kw).frames.shape)\n")
    assert child.returncode == 0, child.stderr[-3000:]
    assert "cleaning needs ftfy: True" in child.stdout and "frames (1, 32, 32, 3)" in child.stdout, child.stdout


class _HostToDeviceCopies(TorchDispatchMode):
    """Counts copies between the CPU and the meta device, which stands in for CUDA here."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            devices = {a.device.type for a in (*args, out) if isinstance(a, torch.Tensor)}
            self.count += devices == {"cpu", "meta"}
        return out


@pytest.mark.parametrize("solver_name", SOLVER_NAMES)
def test_denoise_loop_copies_the_schedule_to_the_device_once(solver_name):
    """A pageable host-to-device copy blocks the host until the GPU has finished the previous
    step. The loop moves the timesteps once; the solver's CPU sigmas enter as scalars (no copy)."""
    steps, seen = 6, []

    def dit(x, t, context):
        seen.append((t.device.type, tuple(t.shape)))
        return 0.5 * x

    latents = torch.empty(2, 4, 1, 2, 2, device="meta")
    context = torch.empty(2, 3, 8, device="meta")
    with _HostToDeviceCopies() as copies:
        out = cfg_denoise(dit, latents, context, context, make_solver(solver_name, steps, 5.0), 5.0)
    assert out.device.type == "meta" and out.shape == latents.shape
    assert seen == [("meta", (2,))] * (2 * steps)  # both CFG branches of every step
    assert copies.count == 1, f"{copies.count} host-to-device copies for {steps} steps"
