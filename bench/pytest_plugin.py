"""A pytest plugin for the GPU check's test run (`pytest -p wan_engine.bench.pytest_plugin`).

It writes each test's node id and its hardware markers into the JUnit XML as properties, so the
check can list exactly which tests ran and tell the NCCL (`multigpu`) tests from the others
without parsing pytest's terminal output.
"""
from __future__ import annotations

HARDWARE_MARKERS = ("gpu", "multigpu", "trt")


def pytest_configure(config):
    # Also registered by tests/conftest.py; a folder outside tests/ (the check's own tests) may
    # have no conftest, and an unknown marker would only warn.
    for name, why in (("gpu", "needs a CUDA GPU"), ("multigpu", "needs two or more CUDA GPUs"),
                      ("trt", "needs TensorRT")):
        config.addinivalue_line("markers", f"{name}: {why}")


def pytest_collection_modifyitems(items):
    for item in items:
        marks = sorted({m.name for m in item.iter_markers()} & set(HARDWARE_MARKERS))
        item.user_properties.append(("nodeid", item.nodeid))
        item.user_properties.append(("markers", ",".join(marks)))
