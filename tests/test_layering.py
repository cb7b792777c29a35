"""The layout one can read at a glance: imports point one way along the data flow, no cycles
(lazy imports count), and no module or function so long that it does several jobs.

    foundation (errors, ids, schema, plain, geometry, files, image_io, labels, manifest, ...)
      <- synth (generators)            <- data (transforms, datasets)   <- models <- training
      <- qc                            <- inference (uses data's preprocessing and qc)
      <- stats (torch-free: foundation's pure-Python part only)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wmhseg

SRC = Path(wmhseg.__file__).parent
FOUNDATION = ("errors", "ids", "schema", "plain", "geometry", "files", "image_io", "labels", "xfm", "metrics",
              "changes", "networks", "checkpoint", "registration", "input_checks", "manifest", "cli", "lean_imports",
              "parallel")
PURE = ("errors", "ids", "schema", "plain", "files", "parallel")  # no NumPy-array image or torch dependency
ALLOWED = {  # package -> the wmhseg packages and modules it may import besides its own
    "stats": PURE,
    "synth": FOUNDATION,
    "data": FOUNDATION,
    "qc": FOUNDATION,
    "bison": FOUNDATION,
    "models": (*FOUNDATION, "data"),
    "training": (*FOUNDATION, "data", "models"),
    "inference": (*FOUNDATION, "data", "qc"),
    **{name: FOUNDATION for name in FOUNDATION},
}
# (module, imported module, why it is still there): each must still exist, so the list only shrinks
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}
KNOWN_CYCLES: list[list[str]] = []
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60  # a function's lines without its docstring
LONG: dict[tuple[str, str | None], int] = {}  # (module, function or None) -> lines today: only shrinks


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("wmhseg", *path.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every wmhseg module ``name`` imports at run time, at the top or inside a function (imports
    under ``if TYPE_CHECKING:`` are for the type checker only and never run)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_hidden_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    # a package's __init__ importing its own modules is how a package exports; leave those edges out
    graph = {m: {d for d in deps if not (MODULES[m].name == "__init__.py" and d.startswith(m + "."))}
             for m, deps in GRAPH.items()}
    assert sorted(_cycles(graph)) == KNOWN_CYCLES


def test_imports_point_one_way():
    wrong = set()
    for module, deps in GRAPH.items():
        area = _area(module)
        allowed = ALLOWED.get(area)
        if allowed is None:
            continue
        for dep in deps:
            if dep == "wmhseg" or _area(dep) in (area, *allowed):
                continue
            wrong.add((module, dep))
    assert wrong == set(KNOWN_EXCEPTIONS), sorted(wrong ^ set(KNOWN_EXCEPTIONS))


def test_every_module_belongs_to_a_layer():
    areas = {_area(m) for m in MODULES} - {""}
    assert areas <= set(ALLOWED), areas - set(ALLOWED)


def _lengths() -> dict[tuple[str, str | None], int]:
    out = {}
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            out[(name, None)] = text.count("\n")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node)
                if n > MAX_FUNCTION_LINES:
                    out[(name, node.name)] = n
    return out


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's length from its signature to its end, its docstring left out (documenting
    every argument must not push a function over the limit)."""
    body = node.body
    docstring = ast.get_docstring(node, clean=False) is not None
    doc_lines = body[0].end_lineno - body[0].lineno + 1 if docstring else 0
    return node.end_lineno - node.lineno + 1 - doc_lines


def test_modules_and_functions_stay_short():
    found = _lengths()
    grown = {k: v for k, v in found.items() if v > LONG.get(k, 0)}
    assert not grown, f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function: {grown}"
    stale = sorted(set(LONG) - set(found))
    assert not stale, f"now short enough, remove from LONG: {stale}"


@pytest.mark.parametrize("area", ["stats", "synth"])
def test_torch_free_areas_import_no_torch(area):
    for module, path in MODULES.items():
        if _area(module) != area:
            continue
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"torch", "monai", "lightning", "torchio"}, (module, names)


def test_no_two_modules_share_a_name():
    names: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        if path.name not in ("__init__.py", "__main__.py"):
            names.setdefault(path.name, []).append(module)
    assert {n: m for n, m in names.items() if len(m) > 1} == {}
