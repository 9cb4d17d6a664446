"""Check each ORM fix before it is first shown: build the queryset with the fix applied, from the
fix's own text, and compile it — on a background thread, never on a request, never touching the
database.

Why a thread: compiling a queryset costs a few hundred microseconds, once per distinct fix; a
request must not pay it. The contexts that lead to a fix are queued as soon as the ORM sees them
(`submit`), so by the time the request ends the verdict is usually there. The detector asks for
the verdict when it writes a finding (`verdict`): known -> the fix is shown (or, when it failed,
the finding says so without it); not known yet -> the request waits for it at most FIRST_WAIT_S,
once per distinct fix in a process (a loaded machine can starve the thread; a finding's first
occurrence is often its only one), then the finding goes out without the fix this once.

How a fix is checked (`check`): the text the user would paste (``Visit.objects.select_related(
'patient').prefetch_related(Prefetch('orders', queryset=...))``) is evaluated with only the
models it names, Django's ``Prefetch`` / ``GenericPrefetch`` / ``Q`` / ``F`` / ``OuterRef`` /
``Exists`` and the aggregate functions in scope (no builtins); the ``...`` standing for the
user's filter values becomes ``F()`` of the same field. Then ``str(queryset.query)`` compiles
the joins and annotations (``FieldError`` on a path ``select_related`` cannot follow), and each
prefetch lookup is walked over the model classes with the test Django's
``prefetch_related_objects`` applies to the first instance of each level (the descriptor, or
the related manager it builds, must be able to prefetch), each ``Prefetch`` queryset compiled
and its model and ``to_attr`` checked. ``in_bulk`` is called with an empty list (Django
validates ``field_name`` and returns ``{}`` without a query). The thread's own database
connection objects refuse to connect: a check that would need the database fails as
"needs the database" instead of touching it.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from hms_otel_agent import guard
from hms_otel_agent.signals import fixes
from hms_otel_agent.signals.fixes import Fix, Verdict

COMPONENT = "fix check"
MAX_VERDICTS = 4096
MAX_QUEUED = 512
FIRST_WAIT_S = 0.25
_ELLIPSIS = re.compile(r"\b([a-z_][a-z0-9_]*)=\.\.\.")  # ``status=...`` in a fix's text
_ALLOWED_CALLS = ("Count", "Max", "Min", "Sum", "Avg", "StdDev", "Variance")


class NeedsDatabase(RuntimeError):
    pass


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NeedsDatabase("the check would need the database")


def _block_database() -> None:
    """This thread's connection objects (Django keeps one per thread) never connect."""
    from django.db import connections

    for alias in connections:
        connection = connections[alias]
        connection.ensure_connection = _refuse
        connection.connect = _refuse


def _model(label: str) -> Any:
    from django.apps import apps

    return apps.get_model(label)


def _labels(fix: Fix) -> set[str]:
    labels = {fix.root}

    def walk(lookups: tuple[fixes.Lookup, ...]) -> None:
        for lookup in lookups:
            for qs in lookup.querysets:
                labels.add(qs.model)
                walk(qs.prefetch)

    walk(fix.prefetch)
    return labels


def _namespace(fix: Fix, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    from django.db import models
    from django.db.models import Exists, F, OuterRef, Prefetch, Q

    names: dict[str, Any] = {"__builtins__": {}}
    for label in _labels(fix) | set(extra):
        short = fixes.short(label)
        model = _model(label)
        if names.get(short, model) is not model:
            raise ValueError(f"two models named {short}")
        names[short] = model
    names.update(Prefetch=Prefetch, Q=Q, F=F, OuterRef=OuterRef, Exists=Exists, models=models)
    for name in _ALLOWED_CALLS:
        names[name] = getattr(models, name)
    try:
        from django.contrib.contenttypes.prefetch import GenericPrefetch

        names["GenericPrefetch"] = GenericPrefetch
    except ImportError:  # Django 4.2
        pass
    return names


def _with_fields(text: str) -> str:
    """``status=...`` -> ``status=F('status')``: the user's values, as a value of the right type."""
    return _ELLIPSIS.sub(lambda m: f"{m.group(1)}=F({m.group(1).rsplit('__', 1)[0]!r})", text)


def _walk_prefetch(model: Any, lookup: Any) -> None:
    """Raise unless Django can prefetch every level of `lookup` (a Prefetch) from `model`."""
    from django.core.exceptions import FieldDoesNotExist

    levels = lookup.prefetch_through.split("__")
    current = model
    for level, name in enumerate(levels):
        descriptor = getattr(current, name, None)
        if descriptor is None:
            raise AttributeError(f"Cannot find '{name}' on {current.__name__} object")
        prefetcher = descriptor
        manager = getattr(descriptor, "related_manager_cls", None) or getattr(descriptor, "manager", None)
        if not _can_prefetch(prefetcher) and not (manager is not None and _can_prefetch(manager)):
            raise ValueError(f"'{name}' does not support prefetching")
        last = level == len(levels) - 1
        querysets = _querysets(lookup, level)
        for queryset in querysets:
            str(queryset.query)
        kind, target, _ = accessors(current).get(name, ("", "", ""))
        if last and lookup.to_attr:
            try:
                current._meta.get_field(lookup.to_attr)
            except FieldDoesNotExist:
                pass
            else:
                raise ValueError(
                    f"to_attr={lookup.to_attr} conflicts with a field on the {current.__name__} model"
                )
        if kind == "generic_fk":
            if not last:
                raise ValueError(f"'{name}' is a GenericForeignKey: nothing can follow it in a path")
            return
        if not target:
            raise ValueError(f"'{name}' of {current.__name__} reaches no model")
        current = _model(target)
        for queryset in querysets:
            if queryset.model is not current:
                raise ValueError(
                    f"the queryset of '{name}' is of {queryset.model.__name__}, not {current.__name__}"
                )


def _can_prefetch(obj: Any) -> bool:
    return hasattr(obj, "get_prefetch_querysets") or hasattr(obj, "get_prefetch_queryset")


def _querysets(lookup: Any, level: int) -> list[Any]:
    getter = getattr(lookup, "get_current_querysets", None)
    if getter is not None:
        found = getter(level)
        return list(found) if found else []
    queryset = lookup.get_current_queryset(level)  # Django 4.2
    return [queryset] if queryset is not None else []


def _check_queryset(queryset: Any) -> None:
    from django.db.models.query import normalize_prefetch_lookups

    str(queryset.query)
    for lookup in normalize_prefetch_lookups(reversed(queryset._prefetch_related_lookups)):
        _walk_prefetch(queryset.model, lookup)


def check(fix: Fix) -> Verdict:
    """Build and compile `fix` (in this thread; see the module's docstring). Never raises."""
    try:
        _check(fix)
    except NeedsDatabase:
        return Verdict(False, "not checked: it would need the database")
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        return Verdict(False, f"{type(exc).__name__}: {message}"[:300])
    return Verdict(True)


def _check(fix: Fix) -> None:
    model = fixes.short(fix.root)
    if fix.kind == fixes.ADMIN_FULL_RESULT_COUNT:
        return  # a ModelAdmin attribute every Django version has
    if fix.kind == fixes.IN_BULK:
        names = _namespace(fix)
        manager = names[model].objects
        result = manager.in_bulk([], field_name=fix.field) if fix.field else manager.in_bulk([])
        if result != {}:
            raise ValueError("in_bulk([]) returned rows")
        return
    if fix.kind == fixes.DICT_QUERY:
        names = _namespace(fix)
        for key in fix.field.split(","):
            str(names[model].objects.filter(**{key: names["F"](key)}).query)
        return
    calls = fixes.queryset_calls(fix)
    if not calls:
        raise ValueError("nothing to apply")
    extra = tuple(_exists_models(fix))
    queryset = eval(_with_fields(f"{model}.objects{calls}"), _namespace(fix, extra))
    _check_queryset(queryset)


def _exists_models(fix: Fix) -> list[str]:
    """Models named in annotations (``Exists(Visit.objects...)``), by label, from the root's
    relations (a name in a fix is always a model the route reached)."""
    root = _model(fix.root)
    labels = [target for _, target, _ in accessors(root).values() if target]
    wanted = {m.group(1) for _, text in fix.annotate for m in re.finditer(r"\b([A-Z]\w*)\.objects", text)}
    return [label for label in labels if fixes.short(label) in wanted]


class BackgroundChecker:
    """Verdicts by fix; checks run one at a time on a daemon thread (started on first use,
    again in a forked child). Bounded: at most MAX_QUEUED waiting, MAX_VERDICTS kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked = threading.Condition(self._lock)
        self._waited: set[Fix] = set()  # fixes a request already waited for
        self._verdicts: dict[Fix, Verdict] = {}
        self._queued: deque[Fix] = deque()
        self._waiting: set[Fix] = set()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def verdict(self, fix: Fix) -> Verdict | None:
        found = self._verdicts.get(fix)
        if found is not None:
            return found
        self.submit(fix)
        with self._lock:
            if fix in self._waited or fix not in self._waiting or len(self._waited) >= MAX_QUEUED:
                return self._verdicts.get(fix)
            self._waited.add(fix)
            self._checked.wait_for(lambda: fix in self._verdicts, FIRST_WAIT_S)
            return self._verdicts.get(fix)

    def submit(self, fix: Fix) -> None:
        with self._lock:
            if fix in self._verdicts or fix in self._waiting or len(self._waiting) >= MAX_QUEUED:
                return
            self._waiting.add(fix)
            self._queued.append(fix)
            self._idle.clear()
            self._start()
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is queued (tests, benchmarks)."""
        return self._idle.wait(timeout)

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="hms-otel-fix-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            _block_database()
        except Exception as exc:
            guard.report(COMPONENT, exc)
            return
        while True:
            self._wake.wait()
            with self._lock:
                fix = self._queued.popleft() if self._queued else None
                if fix is None:
                    self._wake.clear()
                    self._idle.set()
                    continue
            verdict = check(fix)
            with self._lock:
                if len(self._verdicts) >= MAX_VERDICTS:
                    self._verdicts.pop(next(iter(self._verdicts)))
                self._verdicts[fix] = verdict
                self._waiting.discard(fix)
                self._waited.discard(fix)
                self._checked.notify_all()


def _no_accessors(model: Any) -> dict[str, tuple[str, str, str]]:
    return {}


# accessor -> (relation kind, model label, remote field) of a model: django_orm's reading of
# _meta, handed over by install() (django_orm imports this module, not the other way round).
accessors: Callable[[Any], dict[str, tuple[str, str, str]]] = _no_accessors


def install(model_accessors: Callable[[Any], dict[str, tuple[str, str, str]]]) -> None:
    """Check fixes from now on (the ORM instrumentation calls this once Django is ready, with
    its reader of the models' relations)."""
    global accessors
    import django

    accessors = model_accessors

    found = set()
    if django.VERSION >= (5, 0):
        found.add(fixes.FEATURE_GENERIC_PREFETCH)
    if django.VERSION >= (6, 1):
        found.add(fixes.FEATURE_FETCH_PEERS)
    fixes.features = frozenset(found)
    if fixes.checker is None:
        fixes.checker = BackgroundChecker()


def uninstall() -> None:
    global accessors
    accessors = _no_accessors
    fixes.checker = None
    fixes.features = frozenset()
