"""Imports point one way (design.md §1): no cycles, and each layer imports only the layers below it.

The graph is read from the source with `ast`, lazy imports inside functions included.
"""
from import_graph import find_cycle, import_graph

BASE = {"wan_engine.env", "wan_engine.configs", "wan_engine.device", "wan_engine.validation",
        "wan_engine.placement"}

# layer -> the other layers it may import (every layer may import BASE). A layer is a top-level
# module or subpackage of the installed `wan_engine`.
ALLOWED = {
    "wan_engine": {"wan_engine.pipelines", "wan_engine.assembly", "wan_engine.video", "wan_engine.configs",
                   "wan_engine.engine"},
    "wan_engine.env": set(),
    "wan_engine.configs": set(),
    "wan_engine.device": set(),
    "wan_engine.validation": set(),
    "wan_engine.placement": set(),
    "wan_engine.video": set(),
    "wan_engine.attention": set(),
    "wan_engine.kernels": set(),
    "wan_engine.engine_config": {"wan_engine.attention"},
    "wan_engine.ops": {"wan_engine.attention", "wan_engine.engine_config", "wan_engine.kernels"},
    # File formats and key maps: no model, no executor, no process group.
    "wan_engine.loading": set(),
    # The oracle knows nothing of loading, the executor, kernels or parallelism.
    "wan_engine.reference": set(),
    "wan_engine.executor": {"wan_engine.reference", "wan_engine.engine_config", "wan_engine.ops",
                            "wan_engine.attention"},
    # vae: the tiled decode shares its tiles over the ranks (parallel/vae_tiles.py).
    "wan_engine.parallel": {"wan_engine.executor", "wan_engine.reference", "wan_engine.attention", "wan_engine.vae"},
    # Export (ONNX, TensorRT) of the executor's fixed-shape core and the static VAE chunks, and the
    # runners that stand in for the executor.
    # loading: the fingerprint of the DiT checkpoint an export is made from (its manifest records it).
    "wan_engine.export": {"wan_engine.executor", "wan_engine.vae", "wan_engine.reference", "wan_engine.engine_config",
                          "wan_engine.loading"},
    # CUDA-graph capture and replay of fixed-shape tensor functions (torch only).
    "wan_engine.graphs": set(),
    # The VAE as static chunk functions (explicit feature-cache slots) and its tiled decode.
    "wan_engine.vae": {"wan_engine.reference", "wan_engine.kernels"},
    # Step-cache policies and their per-request state, over the executor's whole-step functions.
    "wan_engine.cache": {"wan_engine.executor", "wan_engine.graphs"},
    "wan_engine.runner": {"wan_engine.cache", "wan_engine.executor", "wan_engine.parallel", "wan_engine.reference",
                          "wan_engine.graphs"},
    # Named sampling presets and the distilled models' few-step solver.
    "wan_engine.sampling": {"wan_engine.reference"},
    # LoRA files mapped onto official names (loading) and merged into any model by those names.
    "wan_engine.lora": {"wan_engine.loading"},
    # The one place that knows every layer below the pipelines.
    "wan_engine.assembly": {"wan_engine.loading", "wan_engine.reference", "wan_engine.executor",
                            "wan_engine.parallel", "wan_engine.engine_config", "wan_engine.cache", "wan_engine.lora",
                            "wan_engine.export"},
    # The toy world (torch only) and the training of the `shapes` model on it.
    "wan_engine.shapes": {"wan_engine.assembly", "wan_engine.reference", "wan_engine.loading"},
    # (export: an exported engine's shape ranges bound the requests a pipeline accepts)
    "wan_engine.pipelines": {"wan_engine.assembly", "wan_engine.runner", "wan_engine.parallel", "wan_engine.lora",
                             "wan_engine.sampling",
                             "wan_engine.reference", "wan_engine.executor", "wan_engine.cache", "wan_engine.vae",
                             "wan_engine.graphs", "wan_engine.export"},
    # Load once, queue, run one job at a time per GPU group (rank 0 leads the other ranks).
    "wan_engine.engine": {"wan_engine.pipelines", "wan_engine.cache", "wan_engine.parallel", "wan_engine.sampling"},
}
# The HTTP server (wan_engine.serve) is a face like the CLI: it sits on the Engine.
FACES = {"wan_engine.cli", "wan_engine.bench", "wan_engine.__main__", "wan_engine.serve"}  # may import anything but each other's internals


def layer_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_layer_imports_only_layers_below_it():
    graph = import_graph()
    layers = {layer_of(m) for m in graph}
    unknown = layers - set(ALLOWED) - FACES
    assert not unknown, f"new layers {sorted(unknown)}: add them to ALLOWED with the layers they may import"
    forbidden = []
    for module, targets in sorted(graph.items()):
        source = layer_of(module)
        if source in FACES:
            continue
        for target in sorted(targets):
            dest = layer_of(target)
            if dest != source and dest not in BASE | ALLOWED[source]:
                forbidden.append(f"{module} -> {target}")
    assert not forbidden, "forbidden imports:\n" + "\n".join(forbidden)


def test_bench_never_imports_the_cli():
    graph = import_graph()
    edges = [f"{m} -> {t}" for m, ts in graph.items() if layer_of(m) == "wan_engine.bench"
             for t in ts if layer_of(t) == "wan_engine.cli"]
    assert not edges, edges


def test_the_walker_sees_lazy_and_relative_imports():
    """The checker itself: a function-level relative import is an edge (so the test can fail)."""
    graph = import_graph()
    assert "wan_engine.kernels" in graph["wan_engine.ops"]  # `from . import kernels` inside a function
    assert "wan_engine.assembly" in graph["wan_engine.pipelines.t2v"]  # lazy, in from_pretrained
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
