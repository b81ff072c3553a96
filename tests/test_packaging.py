"""The wheel users install: every module of the source tree is in it, and the installed copy imports.

An editable install finds any folder under wan_engine/, so the rest of the suite cannot see a package
that setup.py leaves out of a wheel (wan_engine.lora once was). This test builds the wheel from a copy
of the checkout, unpacks it, and imports every module from the unpacked copy alone.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from import_graph import REPO, source_modules

# what a build needs from the checkout; everything else (virtualenvs, results, caches) stays behind
SOURCES = ("setup.py", "README.md", "wan_engine", "bench")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("setuptools is missing from the test environment: the wheel cannot be built offline")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=SKIP)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--disable-pip-version-check", "-q", "-w", str(dist), str(src)],
                           cwd=dist, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("wan_engine-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_holds_every_source_module_and_the_shapes_weights(unpacked_wheel):
    missing = [name for name, path in source_modules().items()
               if not (unpacked_wheel / Path(*name.split("."))).with_suffix(".py").exists()
               and not (unpacked_wheel / Path(*name.split(".")) / "__init__.py").exists()]
    assert missing == [], f"modules left out of the wheel: {missing}"
    shipped = {p.relative_to(REPO / "wan_engine") for p in (REPO / "wan_engine/shapes").rglob("*")
               if p.is_file() and p.suffix in (".json", ".safetensors", ".pth")}
    assert shipped, "the shapes weights are not in the checkout"
    absent = [str(p) for p in shipped if not (unpacked_wheel / "wan_engine" / p).exists()]
    assert absent == [], f"shapes weights left out of the wheel: {absent}"


def test_every_module_imports_from_the_installed_wheel_alone(unpacked_wheel, tmp_path):
    # a __main__ module runs its program when imported: found, not imported
    names = sorted(name for name in source_modules() if not name.endswith(".__main__"))
    mains = sorted(name for name in source_modules() if name.endswith(".__main__"))
    script = (
        "import importlib, sys\n"
        f"site = {str(unpacked_wheel)!r}\n"
        "sys.path.insert(0, site)\n"
        "import wan_engine\n"
        "assert wan_engine.__file__.startswith(site), wan_engine.__file__\n"
        f"for name in {names!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "import importlib.util\n"
        f"for name in {mains!r}:\n"
        "    assert importlib.util.find_spec(name).origin.startswith(site), name\n"
        "print('imported', len(sys.modules))\n")
    # cwd outside the checkout; the unpacked wheel goes first on sys.path, ahead of the editable install,
    # and the asserts check where each module came from.
    child = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stdout + child.stderr


def test_the_installed_bench_writes_its_reports_in_the_working_directory(unpacked_wheel, tmp_path):
    # From a wheel the package folder is site-packages (read-only or shared): reports go to ./bench-results.
    script = (f"import sys; sys.path.insert(0, {str(unpacked_wheel)!r})\n"
              "from wan_engine.bench.cli import DEFAULT_OUT, default_out\n"
              "print(DEFAULT_OUT, default_out().resolve())\n")
    child = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stdout + child.stderr
    relative, resolved = child.stdout.split()
    assert relative == "bench-results" and Path(resolved) == tmp_path.resolve() / "bench-results"


def test_the_checkouts_bench_writes_its_reports_in_bench_results():
    from wan_engine.bench.cli import default_out
    assert default_out(REPO / "bench") == REPO / "bench" / "results"
