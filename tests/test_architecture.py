"""The layout's rules, read from the source (ast): no import cycles, no upward imports, SQL only in db/.

Layers, lowest first: ``core`` (models and rules) < ``db`` (the store) < ``train`` (jobs) < ``app``
(CLI, web, use cases). A module may import its own layer and the ones below. Imports inside
functions count too: a lazy import hides a cycle from Python, not from a reader.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["core", "db", "train", "app"]
# SQL as this codebase writes it (upper-case keywords); prose such as "Select objects" is not SQL.
SQL = re.compile(r"^\s*(SELECT\s.*\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|CREATE\s+(TABLE|INDEX)\s|PRAGMA\s)",
                 re.DOTALL)


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for top in LAYERS:
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules a file imports (``from pkg import mod`` resolves to ``pkg.mod`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    # A package's __init__ is imported with any of its modules; edges to it carry no cycle risk of their own.
    return {m: {d for d in imports(p, known) if d != m and not known[d].name == "__init__.py"} for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[str]:
    rank = {name: k for k, name in enumerate(LAYERS)}
    return [f"{m} imports {d}" for m, deps in sorted(g.items()) for d in sorted(deps)
            if rank[d.split(".")[0]] > rank[m.split(".")[0]]]


def sql_outside_db(root: Path = ROOT) -> list[str]:
    bad = []
    for m, path in modules(root).items():
        if m.startswith("db"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
                bad.append(f"{path.relative_to(root)}:{node.lineno}: {node.value.strip()[:60]}")
    return bad


def test_no_import_cycles():
    found = cycles(graph())
    print(f"{len(graph())} modules, import cycles: {found or 'none'}")
    assert found == []


def test_nothing_imports_upward():
    found = upward(graph())
    print(f"upward imports: {found or 'none'}")
    assert found == []


def test_sql_lives_in_db_only():
    found = sql_outside_db()
    print(f"SQL outside db/: {found or 'none'}")
    assert found == []


@pytest.mark.parametrize("planted, rule", [
    ({"core/a.py": "from core import b\n", "core/b.py": "def f():\n    import core.a\n"}, cycles),
    ({"core/a.py": "from db.store import Store\n", "db/store.py": ""}, upward),
    ({"train/a.py": "x = 'SELECT * FROM photos'\n"}, None),
])
def test_the_checks_catch_what_they_guard(tmp_path, planted, rule):
    for top in LAYERS:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text("")
    for rel, text in planted.items():
        (tmp_path / rel).write_text(text)
    if rule is None:
        assert sql_outside_db(tmp_path)
    else:
        assert rule(graph(tmp_path))
