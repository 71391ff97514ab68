"""The package's shape: no import cycle anywhere, a handful of top-level modules, and every
import the README and the notebook show resolving."""

import ast
import importlib
import json
import re

from tests.conftest import REPO

PACKAGE = REPO / "flax_sentiment"


def _module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """{module: modules of ours it imports}, counting every import: at the top, inside
    functions and under TYPE_CHECKING alike (each is an edge a reader must follow)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["flax_sentiment.training.loop"]  # it sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_handful_of_modules_at_the_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 8, top
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["bench", "data", "evaluation", "export", "models", "training", "tuning"]


def _documented_imports():
    texts = [(REPO / "README.md").read_text()]
    texts += [p.read_text() for p in (REPO / "docs").glob("*.md")]
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        texts += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    found = set()
    for text in texts:
        for module, names in re.findall(r"from (flax_sentiment[\w.]*) import ([\w, ]+)", text):
            found |= {(module, n.strip()) for n in names.split(",") if n.strip()}
        if "import flax_sentiment as fs" in text:
            found |= {("flax_sentiment", n) for n in re.findall(r"\bfs\.(\w+)", text)}
    return found


def test_every_documented_import_resolves():
    found = _documented_imports()
    assert {("flax_sentiment", "load_pretrained"),
            ("flax_sentiment.evaluation.predict", "Classifier")} <= found
    missing = [f"from {m} import {n}" for m, n in sorted(found)
               if not hasattr(importlib.import_module(m), n)
               and importlib.util.find_spec(f"{m}.{n}") is None]
    assert not missing, missing
