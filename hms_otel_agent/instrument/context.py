"""Per-operation context that crosses from the ORM patches to the DB span hooks.

The ORM patches set `current_orm` around the code that runs SQL; the DB span hook reads
it in the same thread or asyncio task. ContextVars keep concurrent requests (threads,
asyncio tasks, asgiref's sync_to_async threads) apart.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Callable
from contextvars import ContextVar
from types import CodeType, FrameType
from typing import Any

from opentelemetry.trace import get_current_span

from hms_otel_agent.layout import agent_parts
from hms_otel_agent.signals.activity import CodeLocation, OrmContext


class PendingOrm:
    """An ORM operation's context whose code location is looked up only when a statement runs
    under it and its DB span is recorded (`resolve`, once per operation): on real code the ORM
    runs many more operations than statements (empty prefetches, evaluated querysets), and the
    walk up the stack was the largest part of the capture. instrument/django_orm.py makes them."""

    __slots__ = ("kind", "relation")

    kind: str
    relation: str

    def resolve(self) -> OrmContext | None:
        """The context with its location; None if the agent failed to build it (reported)."""
        raise NotImplementedError


current_orm: ContextVar[OrmContext | PendingOrm | None] = ContextVar("hms_otel_orm", default=None)

# Set by pipeline.build (HMS_OTEL_DETECT_SAMPLED_OUT): sink(parent span, record, start_ns, end_ns)
# adds the record of a statement (instrument/db.py DbSpanRecord) or of a Django cache call
# (CacheCall) run without a span of its own to its owner's activity
# (SignalProcessor.record_detached).
_detached_sink: Callable[[Any, Any, int, int], None] | None = None


def set_detached_sink(sink: Callable[[Any, Any, int, int], None] | None) -> None:
    global _detached_sink
    _detached_sink = sink


def detection_only_parent() -> Any:
    """The current span when it is recorded for detection only (head sampling dropped the
    request: pipeline.DetectingSampler), else None: what runs under it needs its record for
    the detectors, not a span."""
    if _detached_sink is None:
        return None
    parent = get_current_span()
    if parent.is_recording() and not parent.get_span_context().trace_flags.sampled:
        return parent
    return None


def add_detached(parent: Any, record: Any, start_ns: int, end_ns: int) -> None:
    sink = _detached_sink
    if sink is not None:
        sink(parent, record, start_ns, end_ns)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# The agent's own modules (layout.py); anything else in the package, such as the bundled example
# applications, is user code to the agent.
_AGENT_PARTS = frozenset(agent_parts())


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            path = sysconfig.get_paths()[name]
        except KeyError:
            continue
        dirs.add(os.path.realpath(path) + os.sep)
        dirs.add(os.path.abspath(path) + os.sep)
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")):
            dirs.add(os.path.abspath(entry) + os.sep)
    return tuple(sorted(dirs))


_LIBRARY_DIRS = _library_dirs()
# filename -> display path for user code, or "" for library code; bounded by the number
# of source files in the process.
_classified: dict[str, str] = {}
# (code object, line) -> its CodeLocation: one object per line of user code that runs SQL.
_locations: dict[tuple[CodeType, int], CodeLocation] = {}


def _classify(filename: str, module: object = None) -> str:
    path = os.path.abspath(filename)
    if filename.startswith("<"):
        user = False
    elif path.startswith(_PACKAGE_DIR):
        head = path[len(_PACKAGE_DIR) :].split(os.sep, 1)[0]
        user = os.path.splitext(head)[0] not in _AGENT_PARTS
    else:
        user = not path.startswith(_LIBRARY_DIRS) and f"{os.sep}django{os.sep}" not in path
    shown = display_path(path, module if isinstance(module, str) else "") if user else ""
    if len(_classified) < 50_000:
        _classified[filename] = shown
    return shown


def display_path(path: str, module: str = "") -> str:
    """How a source file is shown (code.file.path, hints, reports), the same in every process
    of a run whatever started it: relative to the current directory when under it (the project
    root, where manage.py or gunicorn is started), else its import path from the module's name
    (``hms_otel_agent/sample/hms/views.py``, also for an editable install or another current
    directory), else relative to the sys.path entry it is under, else absolute."""
    cwd = os.getcwd() + os.sep
    if path.startswith(cwd):
        return path[len(cwd) :]
    imported = _import_path(path, module)
    if imported:
        return imported
    best = ""
    for entry in sys.path:
        root = os.path.abspath(entry or ".") + os.sep
        if path.startswith(root) and len(root) > len(best):
            best = root
    return path[len(best) :] if best else path


def _import_path(path: str, module: str) -> str:
    """``a/b/c.py`` for module ``a.b.c`` at ``.../a/b/c.py`` (``a/b/__init__.py`` for package
    ``a.b``); "" when the path does not end that way (``__main__``, a module run as a script)."""
    if not module or module == "__main__":
        return ""
    parts = module.split(".")
    stem, ext = os.path.splitext(path)
    if os.path.basename(stem) == "__init__":
        parts.append("__init__")
    tail = os.sep + os.sep.join(parts)
    if not stem.endswith(tail):
        return ""
    return tail[1:] + ext


def user_location(frame: FrameType | None = None, max_depth: int = 64) -> CodeLocation | None:
    """Walk up from `frame` (default: the caller) to the first frame of user code."""
    if frame is None:
        frame = sys._getframe(1)
    classified = _classified
    depth = 0
    while frame is not None and depth < max_depth:
        code = frame.f_code
        shown = classified.get(code.co_filename)
        if shown is None:
            shown = _classify(code.co_filename, frame.f_globals.get("__name__"))
        if shown:
            key = (code, frame.f_lineno)
            location = _locations.get(key)
            if location is None:
                location = CodeLocation(shown, frame.f_lineno, code.co_name)
                if len(_locations) < 100_000:
                    _locations[key] = location
            return location
        frame = frame.f_back
        depth += 1
    return None
