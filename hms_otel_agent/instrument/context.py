"""Per-operation context that crosses from the ORM patches to the DB span hooks.

The ORM patches set `current_orm` around the code that runs SQL; the DB span hook reads
it in the same thread or asyncio task. ContextVars keep concurrent requests (threads,
asyncio tasks, asgiref's sync_to_async threads) apart.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from contextvars import ContextVar
from types import CodeType, FrameType
from typing import Any

from hms_otel_agent.layout import agent_parts
from hms_otel_agent.signals.activity import CodeLocation, OrmContext

current_orm: ContextVar[OrmContext | None] = ContextVar("hms_otel_orm", default=None)

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
    template_code = _template_node_code
    while frame is not None and depth < max_depth:
        code = frame.f_code
        if code is template_code:  # a template node renders it: the template and its line
            at = template_location(frame.f_locals.get("self"))
            if at is not None:
                return at
        shown = classified.get(code.co_filename)
        if shown is None:
            shown = _classify(code.co_filename, frame.f_globals.get("__name__"))
        if shown:
            key = (code, frame.f_lineno)
            location = _locations.get(key)
            if location is None:
                # A Jinja2 template's compiled code: the template and its line, not the module's.
                jinja = frame.f_globals.get("__jinja_template__")
                location = jinja_location(jinja, frame.f_lineno) if jinja is not None else None
                if location is None:
                    location = CodeLocation(shown, frame.f_lineno, code.co_name)
                if len(_locations) < 100_000:
                    _locations[key] = location
            return location
        frame = frame.f_back
        depth += 1
    return None


# Django's ``Node.render_annotated`` (set by `instrument.django_templates`): the frame of the
# template node being rendered when the ORM, the cache or an HTTP client is called from a template.
_template_node_code: CodeType | None = None
_template_locations: dict[tuple[str, int], CodeLocation] = {}
TEMPLATE_FUNCTION = "template"


def jinja_location(template: Any, code_line: int) -> CodeLocation | None:
    """``clinic/ward_board.jinja:3 in template`` for a line of a Jinja2 template's compiled code
    (its debug info maps code lines to template lines)."""
    try:
        name = template.name or template.filename
        line = template.get_corresponding_lineno(code_line)
    except Exception:  # a template object of another shape: the plain frame location
        return None
    if not isinstance(name, str) or not isinstance(line, int):
        return None
    return CodeLocation(name, line, TEMPLATE_FUNCTION)


def template_location(node: Any) -> CodeLocation | None:
    """``hms/visit_list.html:12 in template`` for a template node (its origin and token line)."""
    try:
        line = node.token.lineno
        origin = node.origin
        name = origin.template_name or origin.name
    except AttributeError:
        return None
    if not isinstance(name, str) or not isinstance(line, int):
        return None
    key = (name, line)
    location = _template_locations.get(key)
    if location is None:
        location = CodeLocation(name, line, TEMPLATE_FUNCTION)
        if len(_template_locations) < 10_000:
            _template_locations[key] = location
    return location
