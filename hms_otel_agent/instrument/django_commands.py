"""One owner span per Django management command run (``BaseCommand.execute``).

``manage.py import_patients``, ``django-admin`` and ``call_command("import_patients")`` all go
through ``BaseCommand.execute``: the command runs inside an INTERNAL span ``command <name>``
(``hms.work.kind = command``, ``hms.work.name = <name>``), so its queries and cache calls are
grouped and their findings written there. A command called from inside another owner (a
request, a task, another command) is an owner of its own.

Commands that serve or wait rather than do one piece of work get no span (their span would stay
open for the life of the process, holding every query of it): ``runserver``, ``shell``,
``test``, the workers of RQ, Celery, Channels and django-q, ... (`LONG_RUNNING`) and those named
in ``HMS_OTEL_COMMANDS_WITHOUT_SPAN``. What such a command runs outside requests and jobs is
grouped by the implicit units of its threads (instrument/implicit_units.py).

Django's own commands (``migrate``, ``collectstatic``, ``loaddata``, ``createsuperuser``, ...) are
not owners either, and their queries join no implicit unit: their loops are Django's, which the
application cannot change (``migrate`` records each migration and creates each permission with a
query of its own: five "N+1" findings located at ``manage.py``). Their queries are still traced.
(Django's ``runserver``, ``test``, ``shell`` and ``testserver`` run the application's code: they
are only without a span, as above.)
A command of an installed package is an owner: it often runs the application's code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry import context as context_api
from opentelemetry import trace

from hms_otel_agent import guard
from hms_otel_agent.instrument import implicit_units, units

LONG_RUNNING = frozenset(
    (
        *("runserver", "runserver_plus", "testserver", "test", "shell", "shell_plus", "dbshell"),
        *("rqworker", "rqworker-pool", "rqscheduler", "celery", "celeryd", "celerybeat"),
        *("runworker", "qcluster", "process_tasks", "run_huey", "djangohuey", "daphne"),
    )
)

_without_span: frozenset[str] = LONG_RUNNING


def command_name(command: Any) -> str:
    """A command's name: the module it is defined in (``<app>/management/commands/<name>.py``)."""
    module = type(command).__module__ or ""
    return module.rsplit(".", 1)[-1] if ".management.commands." in module else type(command).__name__


def _execute(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    span = token = None
    djangos = False
    try:
        name = command_name(instance)
        if name in _without_span:
            pass  # serves or waits: its requests, jobs and threads have owners of their own
        elif type(instance).__module__.startswith("django."):
            djangos = True
        else:
            span = units.start(f"command {name}", units.COMMAND, {units.NAME: name})
            token = context_api.attach(trace.set_span_in_context(span))
    except Exception as exc:
        guard.report("management command span", exc)
        span = token = None
    if djangos:
        return _run_djangos(wrapped, args, kwargs)
    return units.call_in(span, token, wrapped, args, kwargs)


def _run_djangos(wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    reset = implicit_units.suppressed.set(True)
    try:
        return wrapped(*args, **kwargs)
    finally:
        implicit_units.suppressed.reset(reset)


def install(without_span: tuple[str, ...] = ()) -> Callable[[], None]:
    """The callback that wraps ``BaseCommand.execute`` once Django is ready."""

    def instrument_commands() -> None:
        global _without_span
        _without_span = LONG_RUNNING | frozenset(without_span)
        from django.core.management.base import BaseCommand

        if not isinstance(BaseCommand.__dict__.get("execute"), wrapt.FunctionWrapper):
            wrapt.wrap_function_wrapper(BaseCommand, "execute", _execute)

    return instrument_commands


def uninstall() -> None:
    try:
        from django.core.management.base import BaseCommand
    except ImportError:
        return
    current = BaseCommand.__dict__.get("execute")
    if isinstance(current, wrapt.FunctionWrapper):
        BaseCommand.execute = current.__wrapped__
