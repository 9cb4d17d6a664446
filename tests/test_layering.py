"""The import graph of hms_otel_agent keeps to the layers in hms_otel_agent/layout.py.

Read from the source (AST, every import statement, also those inside functions and under
TYPE_CHECKING): a module imports only layers below its own or the base modules; siblings do not
import each other; signals/ imports neither Django nor the OpenTelemetry SDK; there is no
import cycle between modules; the bundled applications are not imported by the agent.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from hms_otel_agent import layout

PACKAGE = "hms_otel_agent"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
FORBIDDEN_IN_SIGNALS = ("django", "opentelemetry")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").exists()


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = f"{PACKAGE}.{package}" if package else PACKAGE
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from hms_otel_agent.instrument import db`: the submodule is what is imported
            # (agent_graph keeps the package itself only when the name is not a submodule).
            for alias in node.names:
                found.add(f"{target}:{alias.name}")
    return found


def agent_graph() -> dict[str, set[str]]:
    """module (relative to hms_otel_agent) -> the agent modules it imports. Applications
    (layout.APPLICATIONS) are not scanned: they are the agent's users, not the agent."""
    modules = {
        _module_name(p): p
        for p in ROOT.rglob("*.py")
        if _module_name(p).split(".", 1)[0] not in layout.APPLICATIONS and _module_name(p)
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name):
            if imported != PACKAGE and not imported.startswith((PACKAGE + ".", PACKAGE + ":")):
                continue
            target, _, member = imported.partition(":")
            relative = target[len(PACKAGE) + 1 :] if target != PACKAGE else "__init__"
            if member:
                submodule = f"{relative}.{member}" if relative != "__init__" else member
                if submodule in modules:
                    relative = submodule
            # A submodule's package is imported with it: not an edge of its own.
            if relative and relative != name and not name.startswith(relative + "."):
                targets.add(relative)
        graph[name] = targets
    return graph


def external_imports() -> dict[str, set[str]]:
    result = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path) or "__init__"
        result[name] = {i for i in _imports(path, name) if not i.startswith(PACKAGE)}
    return result


def layering_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        own = layout.rank_of(module)
        if own is None:
            problems.append(f"{module}: in no layer of layout.py")
            continue
        for target in sorted(targets):
            theirs = layout.rank_of(target)
            if target.split(".", 1)[0] in layout.APPLICATIONS:
                problems.append(f"{module} imports the application {target}")
            elif theirs is None:
                problems.append(f"{module} imports {target}, in no layer of layout.py")
            elif own == -1 and theirs != -1:
                problems.append(f"{module} (base) imports {target} ({layout.layer_of(target)})")
            elif theirs == -1 or layout.layer_of(module) == layout.layer_of(target):
                continue
            elif theirs <= own:
                problems.append(
                    f"{module} ({layout.layer_of(module)}) imports {target} ({layout.layer_of(target)}): "
                    "against the direction of layout.LAYERS"
                )
    return problems


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# --- the package ---------------------------------------------------------------------------------


def test_every_module_is_in_a_layer() -> None:
    on_disk = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    on_disk -= {"__pycache__"}
    assert sorted(on_disk - set(layout.agent_parts()) - set(layout.APPLICATIONS)) == []
    assert sorted(set(layout.agent_parts()) - on_disk) == []


def test_imports_follow_the_layers() -> None:
    assert layering_violations(agent_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(agent_graph()) == []


def test_signals_import_neither_django_nor_the_sdk() -> None:
    offending = {
        module: sorted(i for i in imports if i.split(".", 1)[0] in FORBIDDEN_IN_SIGNALS)
        for module, imports in external_imports().items()
        if module.startswith("signals")
    }
    assert {m: i for m, i in offending.items() if i} == {}


# --- the checks themselves catch what they are for --------------------------------------------


def test_a_synthetic_cycle_is_found() -> None:
    graph = {
        "processors": {"instrument.eager_loads", "signals.records"},
        "instrument.eager_loads": {"processors"},
        "signals.records": set(),
        "report.spans": {"report.at_exit"},
        "report.at_exit": {"report.build"},
        "report.build": {"report.spans"},
    }
    assert cycles(graph) == [
        ["instrument.eager_loads", "processors"],
        ["report.at_exit", "report.build", "report.spans"],
    ]


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("processors", "instrument.explain"),  # processors <- instrument: EXPLAINER, eager_loads
        ("export.compress", "instrument.db"),  # SPAN_RECORD
        ("report.commands", "launch.options"),  # report -> launch
        ("signals.records", "processors"),
        ("export.batch", "report.spans"),  # export reads nothing of the report
        ("config", "signals.records"),  # base imports a layer
        ("instrument.context", "sample.settings"),  # the agent imports an application
    ],
)
def test_each_break_the_issue_listed_is_found(module: str, target: str) -> None:
    graph = agent_graph()
    graph.setdefault(module, set()).add(target)
    assert any(v.startswith(f"{module} ") for v in layering_violations(graph)), (module, target)


def test_the_real_graph_is_read() -> None:
    """Guards the guard: a graph read wrongly would have nothing to violate."""
    graph = agent_graph()
    assert "instrument.explain" in graph["pipeline"]
    assert "signals.vocabulary" in graph["processors.grouping"]
    assert "report.build" in graph["report.at_exit"]  # an import inside a function
    assert "launch.report_commands" in graph["launch.cli"]


def test_architecture_doc_holds_the_generated_table() -> None:
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    begin = doc.index("-->", doc.index("<!-- layers:begin")) + len("-->\n")
    end = doc.index("<!-- layers:end -->")
    assert doc[begin:end] == layout.markdown_table(), (
        "docs/architecture.md: regenerate the table with `python -m hms_otel_agent.layout`"
    )
