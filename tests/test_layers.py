"""Imports point down (docs/ARCHITECTURE.md): every `import lramlab...` in the package, at module
level or inside a function, goes to a lower layer or stays inside its own package, and no two
modules import each other, directly or around a longer circle.

Parsed with `ast` from the source files, so it sees lazy (function-level) imports too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import lramlab

PKG = Path(lramlab.__file__).parent

# Lowest first. A module belongs to the group named by its first component under lramlab
# (`lramlab.data.store.episodes` -> "data"); `__main__` modules are entry points, the top.
LAYERS = [
    {"", "_optional", "_io", "_proc", "_dataclass_cli"},    # the package root and its small utilities
    {"tokenizer", "manifests"},
    {"data"},                                       # store, sampling, history windows, importers
    {"envs", "models"},                             # simulators; networks
    {"collect", "train"},                           # policies and generation; training
    {"rollout"},                                    # an agent acting in environments
    {"evaluate", "icl", "bench"},
    {"analysis"},
    {"widgets", "studies", "multitask", "pipeline", "cli", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _group(module: str) -> str:
    if module.endswith(".__main__"):
        return "__main__"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    g = _group(module)
    for i, groups in enumerate(LAYERS):
        if g in groups:
            return i
    raise AssertionError(f"{module}: group {g!r} is in no layer of tests/test_layers.py; give it one")


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported lramlab module, line) for every import in the file."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # `from lramlab.x import y` may import the submodule y
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return [(t, ln) for t, ln in out if t == "lramlab" or t.startswith("lramlab.")]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    bad = []
    for mod, path in files.items():
        for target, line in _imports(path, mod):
            if target not in files:  # `from lramlab.x import name`: the name is not a module
                continue
            if target == mod or mod.startswith(target + "."):  # a package's own parents are loaded first
                continue
            edges[mod].add(target)
            same = _group(target) == _group(mod)
            if not same and _layer(target) >= _layer(mod):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} (layer {_layer(mod)}) imports "
                           f"{target} (layer {_layer(target)})")
    return edges, bad


def test_every_import_points_down():
    _, bad = _graph()
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_no_import_circles():
    edges, _ = _graph()
    # a package imports its submodules to re-export them: edges from a package to its own
    # submodules are not circles (the submodules never need the package's namespace)
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The parser finds lazy imports, relative imports and `from x import submodule`."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from ..train import loop\n    import lramlab.evaluate\n")
    got = {t for t, _ in _imports(f, "lramlab.data.mod")}
    assert {"lramlab.train", "lramlab.train.loop", "lramlab.evaluate"} <= got
    assert _layer("lramlab.evaluate") > _layer("lramlab.data.store")
    assert _layer("lramlab.train.__main__") == len(LAYERS) - 1
