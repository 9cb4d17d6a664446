"""Implicit units of work: DB and cache calls made outside any span get an owner per thread.

A plain script, a thread started by the application, a cron entry point: their queries run with
no current span, and an owner-less query can be grouped with nothing. The agent's DB and cache
span start sites (instrument/db.py, redis.py, django_cache.py) call `start_client_span`: with a
current span it is the tracer's ``start_span``; without one, the span is started as a child of
the calling thread's implicit unit -- an INTERNAL span ``implicit <entry point>``
(``hms.work.kind = implicit``), started with the thread's first such call.

The rule (bounded in time, count and memory):

* a thread has at most one open unit; the calls it makes outside any span join it;
* the unit ends when the thread has been idle for ``HMS_OTEL_IMPLICIT_UNIT_IDLE_MS`` (its last
  call ended that long ago), when it holds ``HMS_OTEL_IMPLICIT_UNIT_MAX_CALLS`` calls, when it
  is ``MAX_AGE_S`` old, when its thread has ended, and at exit; the next call starts a new one;
* a background thread (``hms-otel-units``, started with the first unit) checks every open
  unit ``CHECK_FRACTION`` of the idle time; calls also check their own thread's unit;
* the unit ends at the end of its last call (not when the check noticed), so its duration is
  the span of its calls; a unit whose last call is still running is not idle.

Names: the main thread's unit is named after the program (``implicit nightly_import.py``,
``implicit -m myproject.jobs``); another thread's after the thread, with the counters Python
and executors number threads with removed (``implicit thread sync_labs`` for
``Thread-3 (sync_labs)``, ``implicit thread ThreadPoolExecutor``), so that names stay few.

With ``HMS_OTEL_FAST_PATHS=false`` the SQL and Redis spans are the contrib's own, started where
the agent cannot give them a parent: only Django cache API calls start implicit units then.

Concurrent calls of one thread (asyncio tasks of one event loop) share the thread's unit; a
call still running when its unit ends because a later one ended first is not counted in it.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, SpanKind

from hms_otel_agent import guard
from hms_otel_agent.instrument import units

MAX_AGE_S = 60.0
CHECK_FRACTION = 0.5
MAX_UNITS = 10_000  # open units (threads doing owner-less work at once); past it calls go unowned

_lock = threading.Lock()
_units: dict[int, _Unit] = {}  # thread ident -> its open unit
_enabled = False
_idle_ns = 1_000_000_000
_max_calls = 1000
_reaper: threading.Thread | None = None
_wake = threading.Event()
_at_exit_registered = False
_get_current_span = trace.get_current_span
# Set while code runs whose loops are not the application's (Django's own management commands).
suppressed: ContextVar[bool] = ContextVar("hms_otel_no_implicit_unit", default=False)


class _Unit:
    __slots__ = ("calls", "context", "last_child", "span", "started", "thread")

    def __init__(self, span: Any, thread: threading.Thread) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span, context_api.Context())
        self.thread = thread
        self.started = time.monotonic()
        self.calls = 0
        self.last_child: Any = None

    def end_time(self) -> int | None:
        """The end of its last call: None while that call runs."""
        child = self.last_child
        if child is None:
            return time.time_ns()
        return getattr(child, "end_time", None) or (None if child.is_recording() else time.time_ns())

    def due(self, now: float) -> bool:
        """Whether it should end now."""
        if self.calls >= _max_calls or now - self.started >= MAX_AGE_S or not self.thread.is_alive():
            return True
        ended = self.end_time()
        return ended is not None and time.time_ns() - ended >= _idle_ns


def configure(enabled: bool, idle_ms: int, max_calls: int) -> None:
    global _enabled, _idle_ns, _max_calls
    _enabled = enabled
    _idle_ns = int(idle_ms * 1e6)
    _max_calls = max(1, max_calls)
    if hasattr(os, "register_at_fork") and not getattr(configure, "_fork_hook", False):
        os.register_at_fork(after_in_child=_after_fork)
        configure._fork_hook = True  # type: ignore[attr-defined]


def set_enabled(enabled: bool) -> None:
    """On or off (the pytest plugin: fixtures' queries are no test's)."""
    global _enabled
    _enabled = enabled
    if not enabled:
        close_all()


def start_client_span(tracer: Any, name: str, kind: SpanKind = SpanKind.CLIENT) -> Any:
    """``tracer.start_span(name, kind=kind)``; with no current span, under the thread's unit."""
    if not _enabled or _get_current_span() is not INVALID_SPAN:
        return tracer.start_span(name, kind=kind)
    unit = None
    try:
        if not suppressed.get():
            unit = _unit_for_call()
    except Exception as exc:
        guard.report("implicit unit of work", exc)
    if unit is None:
        return tracer.start_span(name, kind=kind)
    span = tracer.start_span(name, kind=kind, context=unit.context)
    unit.last_child = span
    return span


def _unit_for_call() -> _Unit | None:
    thread = threading.current_thread()
    ident = thread.ident or 0
    ending: _Unit | None = None
    with _lock:
        unit = _units.get(ident)
        if unit is not None and (unit.thread is not thread or unit.due(time.monotonic())):
            ending = _units.pop(ident)
            unit = None
        if unit is None and len(_units) < MAX_UNITS:
            unit = _units[ident] = _Unit(units.start(_name(thread), units.IMPLICIT), thread)
            _ensure_reaper()
        if unit is not None:
            unit.calls += 1
    if ending is not None:
        _end(ending)
    return unit


def _end(unit: _Unit) -> None:
    try:
        span = unit.span
        end_ns = unit.end_time() or time.time_ns()
        span.end(end_time=max(end_ns, getattr(span, "start_time", 0) or 0))
    except Exception as exc:
        guard.report("implicit unit of work (end)", exc)


def close_due(force: bool = False) -> int:
    """End the units that are due (every one with `force`); returns how many ended."""
    now = time.monotonic()
    with _lock:
        ending = [ident for ident, unit in _units.items() if force or unit.due(now)]
        ended = [_units.pop(ident) for ident in ending]
    for unit in ended:
        _end(unit)
    return len(ended)


def close_all() -> None:
    close_due(force=True)


def open_units() -> int:
    return len(_units)


def _ensure_reaper() -> None:
    """Called under _lock."""
    global _reaper, _at_exit_registered
    if not _at_exit_registered:
        # Registered after the agent's own handler, so it runs before it (atexit is LIFO): the
        # units end while their exporter still runs.
        atexit.register(close_all)
        _at_exit_registered = True
    if _reaper is not None and _reaper.is_alive():
        return
    _reaper = threading.Thread(target=_run, name="hms-otel-units", daemon=True)
    _reaper.start()


def _run() -> None:
    while True:
        _wake.wait(max(0.01, _idle_ns / 1e9 * CHECK_FRACTION))
        _wake.clear()
        try:
            close_due()
        except Exception as exc:
            guard.report("implicit unit of work (check)", exc)


def _after_fork() -> None:
    # The parent's units and checker belong to the parent; the child starts with none.
    global _lock, _reaper
    _lock = threading.Lock()
    _units.clear()
    _reaper = None


_COUNTER = re.compile(r"^Thread-\d+ \((.+)\)$")
_DIGITS = re.compile(r"[-_ ]\d+(?=[-_ ]|$)")  # counters, not digits inside words (hl7)


def _name(thread: threading.Thread) -> str:
    if thread is threading.main_thread():
        return f"implicit {entry_point()}"
    named = _COUNTER.match(thread.name)
    shown = named.group(1) if named else _DIGITS.sub("", thread.name)
    return f"implicit thread {shown or 'thread'}"


def entry_point() -> str:
    """What the program was started as: the script's file name, ``-m module``, or ``python``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        name = str(spec.name)
        return f"-m {name.removesuffix('.__main__')}"
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0 and argv0 not in ("-c", "-"):
        return os.path.basename(argv0)
    return "python"
