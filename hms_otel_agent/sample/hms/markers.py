"""Find the marker comments in ``views.py`` — the code locations tests expect findings at.

A marker is a trailing comment ``# lazy: <target>`` or ``# cache-read: <key pattern>`` on the line
whose frame runs the query or cache read. Marker texts are not unique across views
(``hms.Patient.insurance`` is lazy in both ``patient_list_naive`` and ``encounter_list_naive``), so
look them up together with the view function: ``marker_line("encounter_list_naive",
"hms.Patient.insurance")``. Standard library only: importing this does not set Django up.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

VIEWS_PATH = Path(__file__).resolve().with_name("views.py")
KINDS = ("lazy", "cache-read")


@dataclass(frozen=True)
class Marker:
    kind: str  # "lazy" or "cache-read"
    target: str  # e.g. "hms.Encounter.patient", "get hms.Patient", "patient:{id}:summary"
    view: str  # the enclosing top-level function ("encounter_list_naive") or method ("Visit.__str__")
    filename: str  # absolute path of views.py
    lineno: int


@lru_cache(maxsize=4)
def find_markers(path: str = str(VIEWS_PATH)) -> tuple[Marker, ...]:
    """Every marker in the file, in line order."""
    source = Path(path).read_text(encoding="utf-8")
    spans = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.append((node.lineno, node.end_lineno or node.lineno, node.name))
        elif isinstance(node, ast.ClassDef):  # methods: "Class.method" (models, admin, serializers)
            spans.extend(
                (item.lineno, item.end_lineno or item.lineno, f"{node.name}.{item.name}")
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    markers = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        kind, sep, target = tok.string.lstrip("#").strip().partition(":")
        if not sep or kind not in KINDS:
            continue
        line = tok.start[0]
        view = next((name for start, end, name in spans if start <= line <= end), "")
        markers.append(Marker(kind, target.strip(), view, path, line))
    return tuple(markers)


def markers_of(view: str, path: str = str(VIEWS_PATH)) -> tuple[Marker, ...]:
    return tuple(m for m in find_markers(path) if m.view == view)


def marker_line(view: str, target: str, kind: str = "lazy", path: str = str(VIEWS_PATH)) -> int:
    """Line number of the one ``kind`` marker for ``target`` inside ``view``."""
    found = [m.lineno for m in markers_of(view, path) if m.kind == kind and m.target == target]
    if len(found) != 1:
        raise LookupError(f"expected one '# {kind}: {target}' marker in {view}, found {len(found)}")
    return found[0]
