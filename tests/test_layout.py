"""The shape of the package: no import cycles in edge/, and edge/vision stays pure computation.

Read from the source with ``ast`` rather than by importing, so every import counts: those inside
functions (lazy imports of heavy libraries) and those under ``TYPE_CHECKING`` too. A cycle that
only a lazy import closes still means two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "edge"

# What "pure numpy in, numpy out" excludes: files, processes, sockets, databases, the network.
IO_MODULES = {
    "glob",
    "http",
    "io",
    "os",
    "pathlib",
    "requests",
    "select",
    "shutil",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "tempfile",
    "urllib",
    "paho",
    "serial",
}
# OpenCV calls that read or write files or open devices.
CV2_IO_CALLS = {"imread", "imwrite", "imdecode", "imencode", "VideoCapture", "VideoWriter"}
# The one edge module outside vision/ a vision module may import: the model loader, lazily, in
# FaceEngine.from_config (the constructor itself takes bytes).
VISION_MAY_IMPORT = {"edge.errors", "edge.modelstore"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (packages by their own name)."""
    root = package.parent
    return {module_name(p, root): p for p in sorted(package.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Dotted names a module imports anywhere in its body, with relative imports resolved.

    ``from a.b import c`` gives ``a.b.c`` as well as ``a.b``; the caller keeps what exists.
    """
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (the nearest existing module)."""
    mods = modules_of(package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imported in imported_names(path, name):
            # `import edge.a.b.C` where C is a class: the module is edge.a.b
            while imported and imported not in mods:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_edge_has_no_import_cycles():
    graph = import_graph(EDGE)
    assert len(graph) > 40, "the scan found too few modules to mean anything"
    assert find_cycles(graph) == []


def test_cycle_finder_sees_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.c"] == {"pkg", "pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


def _vision_modules() -> dict[str, Path]:
    return {n: p for n, p in modules_of(EDGE).items() if n.startswith("edge.vision")}


def test_vision_does_no_io():
    vision = _vision_modules()
    assert len(vision) >= 10
    for name, path in vision.items():
        imported = imported_names(path, name)
        io = {m for m in imported if m.split(".")[0] in IO_MODULES}
        assert not io, f"{name} imports {sorted(io)}"
        tree = ast.parse(path.read_text())
        calls = {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "cv2"
            and n.attr in CV2_IO_CALLS
        }
        assert not calls, f"{name} uses cv2.{sorted(calls)}"


def test_vision_depends_only_on_vision_and_the_model_loader():
    graph = import_graph(EDGE)
    for name in _vision_modules():
        outside = {m for m in graph[name] if not m.startswith("edge.vision")}
        assert outside <= VISION_MAY_IMPORT, f"{name} imports {sorted(outside)}"
