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
        "batchnorm",
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
        "glue",
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


def test_the_package_docstring_lists_the_same_layers():
    """The layers as ``ismod/__init__``'s docstring tells a reader, module for module."""
    import re

    import ismod

    told: dict[int, set[str]] = {}
    for block in re.split(r"\n- layer ", ismod.__doc__)[1:]:
        number = int(block.split(",", 1)[0])
        told[number] = set(re.findall(r"(?::mod:`|``)ismod\.(\w+)(?:`|``)", block))
    public = {
        k: {m for m in ms if not m.startswith("_") or m == "__main__"} for k, ms in LAYERS.items()
    }
    assert told == public


def test_no_module_imports_another_modules_private_name():
    """What one module uses of another is public (perhaps internal, outside ``__all__``): a private
    name stays in its module, where it can change without a search through the package."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("ismod")
            ):
                # a private module whole (the compiled kernels, the file helpers) is its layer's own
                bad += [f"{path.relative_to(PACKAGE)} imports {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                        and not (PACKAGE / f"{a.name}.py").exists()]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_every_relative_import_resolves():
    """Every ``from .x import y`` in the package, function-level ones included, names a module that
    exists and a name it defines. A lazy import runs only on its own branch (a DDP one, say), so
    importing the package does not check it; a file moved into a subpackage once left one behind."""
    import importlib

    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        package = list(rel.parts[:-1])  # the package the file sits in
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            try:
                module = importlib.import_module(target)
            except ImportError as err:
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {target}: {err}")
                continue
            for alias in node.names:
                if alias.name == "*" or hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{target}.{alias.name}")
                except ImportError:
                    bad.append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno}: {target} has no {alias.name}"
                    )
    assert not bad, "\n".join(bad)


def test_every_module_compiles_without_warnings():
    """A stray escape in a docstring (``\\,`` in LaTeX) is a DeprecationWarning today and an error
    in a later Python; raw strings are the fix."""
    import warnings

    for path in PACKAGE.rglob("*.py"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")
