"""The rule of the house, read from the source with ``ast`` (lazy imports included).

The package's folders are its floors (docs/architecture.md); each imports only from the
floors below. Capabilities (``distill``, ``evaluation``, ``deploy``) never import each
other, nor do the two methods; only ``cli`` imports ``cli``; there is no import cycle;
files are replaced in one module and sacrebleu's metrics are built in one module; no module,
class or function outgrows what a reader holds in mind at once.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "evokd"

# Lowest first. A module may import from lower floors and from its own folder; on the plugin
# floor, its folders may import each other (the task holds the teacher and the criterion).
FLOORS = [
    ("evokd.errors",),
    ("evokd.files",),
    ("evokd.processes",),
    ("evokd.data",),
    ("evokd.core",),
    ("evokd", "evokd.train", "evokd.tasks", "evokd.criterions", "evokd.models", "evokd.teachers"),
    ("evokd.distill", "evokd.evaluation", "evokd.deploy"),
    ("evokd.chain",),
    ("evokd.methods",),
    ("evokd.cli",),
]
PLUGIN = 5  # the floor of `--user-dir evokd`
SIDE_BY_SIDE = (  # folders that never import each other
    ("evokd.distill", "evokd.evaluation", "evokd.deploy"),
    ("evokd.methods.mckd", "evokd.methods.patch"),
)
ATOMIC_WRITES = "evokd.files"
METRICS = "evokd.core.metrics"
SACREBLEU_METRICS = re.compile(
    r"\b(BLEU|CHRF|TER|corpus_bleu|corpus_chrf|corpus_ter|sentence_bleu|sentence_chrf)\("
)
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES, MAX_LOOSE_MODULES = 400, 300, 100, 8

# Breaks that remain; the list only shrinks (a fixed break must leave it).
KNOWN = set()


def modules():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def resolve(name):
    """The evokd module an imported name lives in (``evokd.x.y.attr`` -> ``evokd.x.y``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name, path):
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "evokd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "evokd":
                continue
            for alias in node.names:
                found.add(
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                )
    return {m for m in map(resolve, found) if m and m != name}


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def floor(name):
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if name == prefix or (prefix != "evokd" and name.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (level, prefix)
    return best


def folder(name, among):
    return next((p for p in among if name == p or name.startswith(p + ".")), None)


def layout_breaks():
    breaks = set()
    for name, deps in GRAPH.items():
        level, home = floor(name)
        for dep in deps:
            dep_level, dep_home = floor(dep)
            if dep_home == home:
                pass
            elif dep_level > level or (dep_level == level and level != PLUGIN):
                breaks.add(f"{name} -> {dep}")
            for group in SIDE_BY_SIDE:
                side, dep_side = folder(name, group), folder(dep, group)
                if side and dep_side and side != dep_side:
                    breaks.add(f"{name} -> {dep}")
            if dep.startswith("evokd.cli") and not name.startswith("evokd.cli"):
                breaks.add(f"{name} -> {dep}")
    return breaks


def cycles():
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def sizes():
    over = set()
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            over.add(f"module {name}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
                if length > limit:
                    over.add(f"{kind} {name}.{node.name}")
    return over


def uses(pattern, allowed):
    return {
        name
        for name, path in MODULES.items()
        if name != allowed and pattern.search(path.read_text(encoding="utf-8"))
    }


def test_every_module_has_a_floor():
    assert [name for name in MODULES if floor(name) is None] == []


def test_floors_import_only_downwards():
    breaks = layout_breaks()
    assert sorted(breaks - KNOWN) == [], "new imports against the floors"
    assert sorted(k for k in KNOWN if " -> " in k and k not in breaks) == [], (
        "fixed: remove from KNOWN"
    )


def test_no_import_cycle():
    found = {"cycle " + " ".join(c) for c in cycles()}
    new = found - KNOWN
    fixed = {k for k in KNOWN if k.startswith("cycle ") and k not in found}
    assert (sorted(new), sorted(fixed)) == ([], [])


def test_os_replace_only_in_the_atomic_write_module():
    found = {f"replace {n}" for n in uses(re.compile(r"\bos\.(replace|rename)\("), ATOMIC_WRITES)}
    new = found - KNOWN
    fixed = {k for k in KNOWN if k.startswith("replace ") and k not in found}
    assert (sorted(new), sorted(fixed)) == ([], [])


def test_sacrebleu_metrics_only_in_the_metrics_module():
    found = {
        f"metric {n}"
        for n in uses(SACREBLEU_METRICS, METRICS)
        if "sacrebleu" in MODULES[n].read_text(encoding="utf-8")
    }
    new = found - KNOWN
    fixed = {k for k in KNOWN if k.startswith("metric ") and k not in found}
    assert (sorted(new), sorted(fixed)) == ([], [])


def test_sizes():
    found = sizes()
    new = found - KNOWN
    fixed = {
        k for k in KNOWN if k.split(" ")[0] in ("module", "class", "function") and k not in found
    }
    assert (sorted(new), sorted(fixed)) == ([], [])
    loose = [p.name for p in PACKAGE.glob("*.py")]
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    found = {
        f"doc {path.relative_to(PACKAGE)}"
        for path in MODULES.values()
        if str(path.relative_to(PACKAGE)) not in text and path.stat().st_size  # empty __init__
    }
    fixed = {k for k in KNOWN if k.startswith("doc ") and k not in found}
    assert (sorted(found - KNOWN), sorted(fixed)) == ([], [])


@pytest.mark.parametrize(
    "graph,expected",
    [({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])],
)
def test_cycle_finder(monkeypatch, graph, expected):
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", graph)
    assert cycles() == expected
