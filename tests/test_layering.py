"""Imports point one way: no cycle between modules or between parts, and a part imports only parts
of strictly lower layers. A part is a direct child of anonfeat/ (a module or a subpackage); every
import statement counts, inside functions too. Read from the source (AST), nothing is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anonfeat"

# Lowest first. A part may import itself and the parts of lower layers, nothing else.
LAYERS = [
    {"errors", "_version", "_lazy"},
    {"comm", "hooks", "heap", "progress", "options", "device", "modelfile", "paths"},
    {"video"},  # decoding; the frame resize an encoder family asks for (video.resize) lives here
    {"encoders", "labels", "nn", "training", "probes"},
    {"store"},
    {"extract", "synth"},  # the pipeline (phase 2: anonfeat/pipeline/ with extract and prune as jobs on it)
    {"sharding"},
    {"audit"},
    {"adapter", "pruning"},
    {"bench"},
    {"cli"},
    {"__main__", "__init__"},
]

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: anonfeat modules it imports}; `from pkg import name` is pkg.name when that is a module."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t.split(".")[0] == "anonfeat" and t != name}
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_parts():
    parts: dict[str, set[str]] = defaultdict(set)
    for module, targets in import_graph().items():
        parts[part(module)] |= {part(t) for t in targets} - {part(module)}
    assert cycles(parts) == []


def test_every_part_imports_only_lower_layers():
    layer = {name: level for level, names in enumerate(LAYERS) for name in names}
    graph = import_graph()
    assert {part(m) for m in graph} <= set(layer), "a new part: give it a place in LAYERS"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if part(m) != part(t) and layer[part(t)] >= layer[part(m)])
    assert upward == []


def test_the_layering_check_sees_imports_inside_functions():
    graph = import_graph()
    assert "anonfeat.probes.metrics" in graph["anonfeat.pruning.train"]  # imported inside evaluate()
    assert "anonfeat.encoders" in graph["anonfeat.sharding"]  # inside extract_sharded's loader


def test_importing_the_pipeline_or_the_store_loads_no_feature_package():
    code = ("import sys, anonfeat.extract, anonfeat.sharding, anonfeat.store; "
            "print(sorted(m for m in sys.modules if m.startswith(('anonfeat.adapter', 'anonfeat.pruning', "
            "'anonfeat.audit', 'anonfeat.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "[]"
