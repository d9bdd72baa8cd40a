"""The import graph of src/: no cycles between modules, and no arrow from a lower layer up to a higher one.

Every import counts, also the ones inside functions (a lazy import is still a dependency: the merge
package once had params -> standalone -> engine -> params through one). Parsed with ast, nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOTS = ("mixmerge", "hydra_plugins")

# Layers, lowest first: a module may import its own layer and those below, never one above. Plumbing at
# the bottom; the pure math packages with their I/O; the data; what runs models on it; the stage library;
# the strategies; the edge (Hydra, the job, the sweeper plugin) at the top.
LAYERS: list[set[str]] = [
    {"mixmerge", "mixmerge.files", "mixmerge.dtypes", "mixmerge.tasks", "mixmerge.cache", "mixmerge.tracking",
     "mixmerge.report", "mixmerge.precision"},
    {"mixmerge.merge", "mixmerge.models", "mixmerge.sweep"},
    {"mixmerge.data"},
    {"mixmerge.eval", "mixmerge.analysis", "mixmerge.train"},
    {"mixmerge.stages"},
    {"mixmerge.strategy"},
    {"mixmerge.config", "mixmerge.job", "mixmerge.cluster", "hydra_plugins"},
]


def _modules() -> dict[str, Path]:
    mods = {}
    for root in ROOTS:
        for path in (SRC / root).rglob("*.py"):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _owner(name: str, mods) -> str | None:
    """The module that defines ``name`` (a module, or a package whose __init__ holds the name)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the src/ modules it imports (anywhere in the file)."""
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            targets |= {_owner(n, mods) for n in names if n.split(".")[0] in ROOTS}
        graph[mod] = targets - {None, mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if parts[0] == "mixmerge" and len(parts) > 1 else parts[0]


def _layer(package: str) -> int:
    for i, members in enumerate(LAYERS):
        if package in members:
            return i
    raise AssertionError(f"{package} is in no layer of tests/test_import_graph.py: add it to LAYERS")


def upward_arrows(graph) -> set[tuple[str, str, str, str]]:
    """(importing package, imported package, importing module, imported module) going up a layer."""
    return {(_package(a), _package(b), a, b) for a, targets in graph.items() for b in targets
            if _layer(_package(b)) > _layer(_package(a))}


def test_the_parser_sees_imports_inside_functions_and_relative_ones(tmp_path):
    graph = import_graph()
    assert "mixmerge.merge.engine" in graph["mixmerge.merge.standalone"]
    assert "mixmerge.merge.combine" in graph["mixmerge.merge.engine"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_upward_arrows():
    arrows = sorted(upward_arrows(import_graph()))
    assert not arrows, "imports pointing up a layer (move the code down, or pass it in):\n" + "\n".join(
        f"  {a} -> {b} ({ma} imports {mb})" for a, b, ma, mb in arrows)


def test_merge_package_layers():
    """Inside merge/: the registry and pure helpers at the bottom, the engines above, the edge on top."""
    order = [
        {"registry", "common", "tensor_names", "method_options", "chat_templates",
         "deltas", "correlation_rule"},
        {"params", "kernels", "io", "fused", "fused.primitives", "fused.rng", "fused.select", "fused.della",
         "fused.combine", "mergekit_methods", "tokenizer_merge",
         "correlation_merge"},
        {"mergekit_yaml", "validate", "output", "combine", "fast_gta", "fisher", "mergekit_layout", "svd_merge"},
        {"config_group", "engine", "in_memory", "slices"},
        {"standalone", "__init__"},
    ]
    order[2] |= {"lora_merge", "lora_io"}  # LoRA-native merging: ΔW math and adapter I/O
    order[3] |= {"lora_engine"}
    order[1].add("regmean")  # RegMean's closed form: pure, beside the kernels
    order[2].add("gram")  # its statistics (runs models), beside fisher
    rank = {name: i for i, names in enumerate(order) for name in names}
    graph = import_graph()
    merge = {m: t for m, t in graph.items() if m == "mixmerge.merge" or m.startswith("mixmerge.merge.")}

    def short(m):
        return "__init__" if m == "mixmerge.merge" else m.removeprefix("mixmerge.merge.")

    for mod, targets in merge.items():
        assert short(mod) in rank, f"{mod} is in no layer of test_merge_package_layers"
        for t in targets:
            if t in merge and t != "mixmerge.merge":
                assert rank[short(t)] <= rank[short(mod)], f"{mod} imports {t}, a higher layer of merge/"
