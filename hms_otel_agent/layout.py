"""The package's layers along the data's path, and which may import which.

One table behind three things: tests/test_layering.py (the import graph keeps to it and has no
cycle), docs/architecture.md (its module table is generated from it) and
instrument/context.py (which source files are the agent's own code, never "user code").

A layer may import the layers below it, never one above it, never a sibling; the base modules
may be imported from anywhere and import nothing of the agent but each other. Plain data and
the standard library; `python -m hms_otel_agent.layout` prints the table of docs/architecture.md.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Layer(NamedTuple):
    name: str
    modules: tuple[str, ...]  # modules and packages under hms_otel_agent/
    job: str


# Top to bottom. Layers with the same rank are siblings (neither imports the other).
LAYERS: tuple[tuple[Layer, ...], ...] = (
    (
        Layer(
            "launch",
            ("launch", "pytest_plugin"),
            "every entry point: hms-otel-run, hms-otel (report, analyze, config, demo), the "
            "sitecustomize bootstrap, the OpenTelemetry distro, the pytest plugin",
        ),
    ),
    (Layer("demo", ("demo",), "`hms-otel demo`'s work: embedded PostgreSQL and Redis, traffic"),),
    (
        Layer(
            "agent",
            ("agent", "shutdown_deadline"),
            "`start()`: settings once, pipeline, instrumentation, live log; one exit deadline per run",
        ),
    ),
    (Layer("pipeline", ("pipeline",), "tracer and meter providers, processors, exporters from Settings"),),
    (
        Layer(
            "instrument",
            ("instrument",),
            "one module per library (psycopg, redis-py, Django server, ORM, cache, connections, "
            "EXPLAIN, eager loads, fix checks, outbound HTTP clients, templates, management commands, "
            "Celery, RQ) and the owner spans of work outside requests (unit_of_work, implicit units)",
        ),
    ),
    (
        Layer(
            "processors",
            ("processors",),
            "live SDK spans -> records: owner grouping, redaction, metrics, EXPLAIN dispatch",
        ),
    ),
    (
        Layer(
            "report",
            ("report",),
            "the findings report and offline analysis over the same records (reads the local "
            "files through export/local_files.py)",
        ),
    ),
    (Layer("export", ("export",), "bounded batching, span compression, OTLP encoding, the local file"),),
    (
        Layer(
            "sdk_internals",
            ("instrument.sdk_internals",),
            "every private SDK or contrib member the agent uses, with its reason; the version gate "
            "and HMS_OTEL_FAST_PATHS (in instrument/, read by the layers above it)",
        ),
    ),
    (
        Layer(
            "signals",
            ("signals",),
            "records, attribute vocabulary, fingerprints, key patterns, detectors, hints, "
            "owner grouping; no Django, no SDK",
        ),
    ),
)
BASE = Layer(
    "base",
    ("__init__", "config", "guard", "layout", "local_paths", "printable"),
    "settings table, error guard, printable text, this table: importable from every layer",
)
# Inside the package but not the agent: applications the agent instruments (their frames are
# user code) and which the agent never imports.
APPLICATIONS = ("sample",)


def _find(module: str) -> tuple[int, Layer] | None:
    """The layer of a dotted module: the longest listed name it is or is inside of."""
    best: tuple[int, Layer] | None = None
    best_len = -1
    for rank, siblings in enumerate(LAYERS):
        for layer in siblings:
            for name in layer.modules:
                if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                    best, best_len = (rank, layer), len(name)
    return best


def rank_of(module: str) -> int | None:
    """The rank of a dotted module under hms_otel_agent (0 = top); -1 for a base module; None
    for an application or an unknown name."""
    if module.split(".", 1)[0] in BASE.modules:
        return -1
    found = _find(module)
    return found[0] if found is not None else None


def layer_of(module: str) -> str:
    head = module.split(".", 1)[0]
    if head in BASE.modules:
        return BASE.name
    found = _find(module)
    if found is not None:
        return found[1].name
    return head if head in APPLICATIONS else ""


def agent_parts() -> tuple[str, ...]:
    """Every top-level module and package name of the agent's own code."""
    names = [m.split(".", 1)[0] for siblings in LAYERS for layer in siblings for m in layer.modules]
    return tuple(dict.fromkeys(names)) + BASE.modules


def _files(name: str, root: str, skip: set[str]) -> str:
    """A layer's modules as they are on disk: ``signals/``: ``owners``, ``records``, ..."""
    path = os.path.join(root, *name.split("."))
    if os.path.isdir(path):
        stems = sorted(
            os.path.splitext(entry)[0] + ("/" if os.path.isdir(os.path.join(path, entry)) else "")
            for entry in os.listdir(path)
            if (entry.endswith(".py") and entry != "__init__.py")
            or (os.path.isdir(os.path.join(path, entry)) and not entry.startswith("__"))
        )
        stems = [s for s in stems if f"{name}.{s.rstrip('/')}" not in skip]
        return f"`{name.replace('.', '/')}/`: " + ", ".join(f"`{s}`" for s in stems)
    return f"`{name.replace('.', '/')}.py`"


def markdown_table(root: str | None = None) -> str:
    """The layer table of docs/architecture.md, from LAYERS and the files under `root`."""
    root = root or os.path.dirname(os.path.abspath(__file__))
    listed = {m for siblings in LAYERS for layer in siblings for m in layer.modules}
    lines = [
        "| layer | modules | job | may import |",
        "|---|---|---|---|",
    ]
    for rank, siblings in enumerate(LAYERS):
        below = [layer.name for lower in LAYERS[rank + 1 :] for layer in lower]
        for layer in siblings:
            modules = "; ".join(_files(m, root, listed - {m}) for m in layer.modules)
            lines.append(
                f"| {layer.name} | {modules} | {layer.job} | {', '.join([*below, 'base']) or 'base'} |"
            )
    base = "; ".join(_files(m, root, set()) for m in BASE.modules if m != "__init__")
    lines.append(f"| {BASE.name} | {base} | {BASE.job} | base only |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m hms_otel_agent.layout: the table for docs/architecture.md
    print(markdown_table(), end="")
