"""Fault injection for tests/reliability/test_faults.py (put this directory on PYTHONPATH and
run the app *without* hms-otel-run: this module starts the agent the way the launcher's
bootstrap does, with faults injected before and after).

HMS_TEST_FAULTS (comma-separated):
    startup     the pipeline cannot be built: the agent does not start
    components  one call in N of every agent component raises: the span processor's on_start,
                span end and redaction, a detector, the SQL span hook (fingerprinting), the
                Redis and Django cache hooks (key patterns), the Django ORM patches (context),
                the span exporter
HMS_TEST_FAULTS_APPLIED: a file that receives the list of faults applied (JSON), since some
components may not exist in every version of the agent.

Every injected exception's message contains a fake patient name: it must never be logged.
"""

from __future__ import annotations

import builtins
import importlib
import itertools
import json
import os
from collections.abc import Callable
from typing import Any

SECRET = "Quill" + "feather"


class InjectedFault(RuntimeError):
    pass


def _every(n: int, original: Callable[..., Any], name: str) -> Callable[..., Any]:
    counter = itertools.count(1)

    def faulty(*args: Any, **kwargs: Any) -> Any:
        if next(counter) % n == 0:
            raise InjectedFault(f"injected into {name} for patient {SECRET}")
        return original(*args, **kwargs)

    return faulty


def _patch(applied: list[str], label: str, module_name: str, attribute: str, n: int) -> None:
    try:
        module = importlib.import_module(module_name)
        setattr(module, attribute, _every(n, getattr(module, attribute), f"{module_name}.{attribute}"))
        applied.append(label)
    except Exception:  # the component does not exist in this version
        pass


def _install() -> None:
    faults = {f for f in os.environ.get("HMS_TEST_FAULTS", "").split(",") if f}
    applied: list[str] = []
    if "startup" in faults:
        _patch(applied, "agent start-up", "hms_otel_agent.pipeline", "build", 1)

    from hms_otel_agent.launch import boot

    boot.boot(os.path.join(os.path.dirname(boot.__file__), "bootstrap", "sitecustomize.py"))

    if "components" in faults:
        _patch(applied, "span processor (on_start)", "hms_otel_agent.processors", "OwnerActivity", 3)
        _patch(applied, "span processor (span end)", "hms_otel_agent.processors", "DbCall", 4)
        # the query's rules: what both generations' URL attributes go through (http.target, url.query)
        _patch(applied, "span processor (redaction)", "hms_otel_agent.signals.urls", "sanitize_query", 2)
        _patch(applied, "SQL span hook", "hms_otel_agent.instrument.db", "fingerprint_sql", 2)
        _patch(applied, "cache hooks", "hms_otel_agent.instrument.cache_hooks", "key_pattern", 2)
        _patch(applied, "Django ORM context", "hms_otel_agent.instrument.django_orm", "_context", 2)
        from hms_otel_agent import agent

        built = agent.current_pipeline()
        if built is not None:
            processor = built.signal_processor

            def broken_detector(activity: Any, settings: Any) -> list[Any]:
                raise InjectedFault(f"detector for patient {SECRET}")

            processor.detectors = (*processor.detectors, broken_detector)
            applied.append("detector")
            for batch in built.batch_processors:
                batch.exporter.export = _every(3, batch.exporter.export, "exporter")  # type: ignore[method-assign]
                applied.append("traces exporter")
    target = os.environ.get("HMS_TEST_FAULTS_APPLIED")
    if target:
        with open(target, "w") as out:
            json.dump(applied, out)


if not getattr(builtins, "_hms_test_faults_installed", False):
    builtins._hms_test_faults_installed = True  # type: ignore[attr-defined]
    _install()
