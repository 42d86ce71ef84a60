"""The package's layers (ARCHITECTURE): no import cycle, and no module imports from a layer above its own.

Every import counts, function-level ones included, as the layering promises."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ismod"

LAYERS = {
    0: {
        "mc",
        "sampling",
        "bounds",
        "tau",
        "diagnostics",
        "stats",
        "process_group",
        "_io",
        "convex",
        "scale",
        "_sumtree_kernels",
        "verdicts",
    },
    1: {"data", "augment", "models"},
    2: {"strategies"},
    3: {"train", "adapters"},
    4: {
        "experiments",
        "suites",
        "runner",
        "findings",
        "plots",
        "widgets",
        "__main__",
        "distributed",
        "bench",
        "diagnosis",
        "conclusions",
    },
}


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts
    return parts[0] if parts[0] != "__init__" else "__init__"


def _imports() -> dict[str, set[str]]:
    """Top-level module (or subpackage) → the ismod modules it imports anywhere in its files."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package's own entry re-exports; checked separately below
        here = _module_of(path)
        depth = len(path.relative_to(PACKAGE).parts) - 1  # 1 inside ismod/strategies/
        targets = graph.setdefault(here, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level - depth == 1:  # relative to ismod/
                    names = (
                        [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                    )
                    targets.update(n for n in names if n != here)
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("ismod.")
            ):
                targets.add(node.module.split(".")[1])
        targets.discard("__init__")
    return graph


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS.values())
    assert set(_imports()) <= layered, (
        f"modules without a layer: {sorted(set(_imports()) - layered)}"
    )


def test_no_module_imports_from_a_layer_above():
    layer = {m: k for k, ms in LAYERS.items() for m in ms}
    bad = [
        f"{m} (layer {layer[m]}) imports {t} (layer {layer[t]})"
        for m, targets in _imports().items()
        for t in targets
        if t in layer and layer[t] > layer[m]
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"
