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
from hms_otel_agent.signals.records import CodeLocation, OrmContext


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

# Set by Pipeline.install (HMS_OTEL_DETECT_SAMPLED_OUT): sink(parent span, record, start_ns, end_ns)
# adds the record of a statement (instrument/db.py DbSpanRecord) or of a Django cache call
# (CacheCall) run without a span of its own to its owner's activity
# (SignalProcessor.record_detached).
_detached_sink: Callable[[Any, Any, int, int], None] | None = None


def set_detached_sink(sink: Callable[[Any, Any, int, int], None] | None) -> None:
    global _detached_sink
    _detached_sink = sink


def detached_sink() -> Callable[[Any, Any, int, int], None] | None:
    return _detached_sink


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


# The awaiting code of an async ORM call (``await Model.objects.aget()``): the query runs in
# asgiref's worker (or the thread blocked in async_to_sync), whose stack has none of it.
async_site: ContextVar[CodeLocation | None] = ContextVar("hms_otel_async_site", default=None)

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


# Frames of libraries that say where a load was triggered when no user frame is below them:
# a template node being rendered (the template and its line), a DRF serializer reading one field
# (the serializer class and field), a form field being rendered (the form class and field), and
# Django's request handler (nothing of the user's below).
TEMPLATE_NODE, SERIALIZER_FIELD, FORM_FIELD, REQUEST_HANDLER = 1, 2, 3, 4
_special_codes: dict[int, int] = {}  # id(code object) -> kind; the code objects are kept alive
_special_files: set[str] = set()
_kept: list[CodeType] = []
# (template file, line) / (serializer class, field name) -> location
_framework_locations: dict[tuple[Any, Any], CodeLocation] = {}
_class_lines: dict[type, int] = {}
MAX_DEPTH = 200  # template rendering is deep: a lazy load in an included fragment is ~100 frames down
_COMPREHENSIONS = frozenset(("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"))


def register_frames(kind: int, *functions: Any) -> None:
    """Mark library functions (their code objects) as framework frames of `kind`."""
    for function in functions:
        code = getattr(function, "__code__", None)
        if isinstance(code, CodeType):
            _special_codes[id(code)] = kind
            _special_files.add(code.co_filename)
            _kept.append(code)


def unregister_frames() -> None:
    _special_codes.clear()
    _special_files.clear()
    _kept.clear()


def function_name(frame: FrameType) -> str:
    """The qualified name of the frame's function (``VisitViewSet.get_queryset``); a
    comprehension or generator expression is named after the function it sits in, and
    ``<locals>`` is dropped (``outer.inner``). Python 3.10 has no ``co_qualname``: the plain
    name there (reading ``self`` from ``frame.f_locals`` would keep the frame's locals alive on
    3.10 — the application's objects would outlive its ``del``)."""
    code = frame.f_code
    name: str = getattr(code, "co_qualname", code.co_name)
    parts = [p for p in name.split(".") if p != "<locals>"]
    while parts and parts[-1] in _COMPREHENSIONS:
        parts.pop()
    if parts:
        return ".".join(parts)
    outer = frame.f_back  # 3.10: the comprehension's frame is called by its function's
    return function_name(outer) if outer is not None and outer.f_code is not code else code.co_name


def user_location(frame: FrameType | None = None, max_depth: int = MAX_DEPTH) -> CodeLocation | None:
    """Where the user's code triggered what runs now: the awaiting code of an async ORM call;
    else, walking up from `frame` (default: the caller), the first frame of user code, or the
    template line / DRF serializer field being rendered when one comes first; a descriptor's
    ``__get__`` in the user's code is passed over for the code that read the attribute. None
    when Django's request handler comes first (middleware, servers and test clients are never
    the place)."""
    site = async_site.get()
    if site is not None:
        return site
    if frame is None:
        frame = sys._getframe(1)
    classified = _classified
    depth = 0
    template_code = _template_node_code
    descriptor: FrameType | None = None
    while frame is not None and depth < max_depth:
        code = frame.f_code
        if code is template_code:  # a template node renders it: the template and its line
            at = _template_location(frame.f_locals.get("self"))
            if at is not None:
                return at
        shown = classified.get(code.co_filename)
        if shown is None:
            shown = _classify(code.co_filename, frame.f_globals.get("__name__"))
        if shown and code.co_name == "__get__" and descriptor is None:
            # A descriptor of the user's code (a custom field's __get__) is shared by every
            # model that uses it: the place is where the attribute was read (kept in case
            # nothing of the user's is above it).
            descriptor = frame
        elif shown:
            key = (code, frame.f_lineno)
            location = _locations.get(key)
            if location is None:
                # A Jinja2 template's compiled code: the template and its line, not the module's.
                jinja = frame.f_globals.get("__jinja_template__")
                location = jinja_location(jinja, frame.f_lineno) if jinja is not None else None
                if location is None:
                    location = CodeLocation(shown, frame.f_lineno, function_name(frame))
                if len(_locations) < 100_000:
                    _locations[key] = location
            return location
        if code.co_filename in _special_files:
            kind = _special_codes.get(id(code))
            if kind == REQUEST_HANDLER:
                return _frame_location(descriptor) if descriptor is not None else None
            if kind is not None:
                found = _framework_location(kind, frame)
                if found is not None:
                    return found
        frame = frame.f_back
        depth += 1
    return _frame_location(descriptor) if descriptor is not None else None


def _frame_location(frame: FrameType) -> CodeLocation | None:
    shown = _classified.get(frame.f_code.co_filename) or _classify(
        frame.f_code.co_filename, frame.f_globals.get("__name__")
    )
    return CodeLocation(shown, frame.f_lineno, function_name(frame)) if shown else None


def descriptor_name(frame: FrameType | None, max_depth: int = 8) -> str:
    """The qualified name of a descriptor of the user's code (``GenericArrayField.__get__``)
    among the first frames above `frame`, or ""."""
    depth = 0
    while frame is not None and depth < max_depth:
        code = frame.f_code
        if code.co_name == "__get__":
            shown = _classified.get(code.co_filename)
            if shown is None:
                shown = _classify(code.co_filename, frame.f_globals.get("__name__"))
            if shown:
                return function_name(frame)
        frame = frame.f_back
        depth += 1
    return ""


def _framework_location(kind: int, frame: FrameType) -> CodeLocation | None:
    try:
        owner: Any = frame.f_locals.get("self")
        if kind == TEMPLATE_NODE:
            return _template_location(owner)
        if kind == FORM_FIELD:  # BoundField.as_widget
            return _member_location(type(owner.form), owner.name)
        return _member_location(type(owner), getattr(frame.f_locals.get("field"), "field_name", None))
    except Exception:  # a framework object of another shape: keep walking
        return None


def _template_location(node: Any) -> CodeLocation | None:
    """The template line of the node being rendered (`template_location`), when the template
    is not a library's (the admin's: keep walking to the user's code)."""
    origin = getattr(node, "origin", None)
    path = getattr(origin, "name", None)
    if isinstance(path, str) and os.path.abspath(path).startswith(_LIBRARY_DIRS):
        return None
    return template_location(node)


def member_location(cls: type, name: str) -> CodeLocation | None:
    """``views.py:30 in FeedingList.model``: a class of the user's and one of its members (the
    class's line), or None for a library's class."""
    return _member_location(cls, name)


def _member_location(cls: type, name: Any) -> CodeLocation | None:
    """``serializers.py:41 in VisitSerializer.clinician``: a serializer (or form) class, its
    ``class`` line, and the field it was reading (rendering), when the class is the user's."""
    if not isinstance(name, str):
        return None
    key = (cls, name)
    location = _framework_locations.get(key)
    if location is None:
        shown = _shown_file(cls.__module__)
        if not shown:
            return None  # a library's serializer: keep walking
        location = CodeLocation(shown, _class_line(cls), f"{cls.__qualname__}.{name}")
        if len(_framework_locations) < 50_000:
            _framework_locations[key] = location
    return location


def _class_line(cls: type) -> int:
    """The line of ``class X`` (read from the source once per class; 0 when unknown)."""
    line = _class_lines.get(cls)
    if line is None:
        try:
            import inspect

            line = inspect.getsourcelines(cls)[1]
        except Exception:
            line = 0
        _class_lines[cls] = line
    return line


_class_locations: dict[type, CodeLocation | None] = {}


def class_location(cls: type) -> CodeLocation | None:
    """``admin.py:18 in VisitAdmin``: where a user class is defined (None for a library's);
    computed once per class."""
    try:
        return _class_locations[cls]
    except KeyError:
        found = _class_locations[cls] = _class_location(cls)
        return found


def _class_location(cls: type) -> CodeLocation | None:
    shown = _shown_file(cls.__module__)
    if not shown:
        return None
    return CodeLocation(shown, _class_line(cls), cls.__qualname__)


def _shown_file(module_name: str) -> str:
    """The path shown for a loaded module's file; "" for a library's or one without a file."""
    filename = getattr(sys.modules.get(module_name), "__file__", None)
    if not isinstance(filename, str):
        return ""
    shown = _classified.get(filename)
    if shown is None:
        shown = _classify(filename, module_name)
    return shown


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
