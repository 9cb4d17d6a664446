"""The agent as an OpenTelemetry distro and configurator, for `opentelemetry-instrument`.

Select both with ``OTEL_PYTHON_DISTRO=hms_otel OTEL_PYTHON_CONFIGURATOR=hms_otel``. When
they are merely installed and not selected, `opentelemetry-instrument` may still pick them
(it takes the first distro and configurator it finds); they then behave exactly like the
defaults, so installing the agent changes nothing for people who do not ask for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from hms_otel_agent.instrument.sdk_internals import run_sdk_configurator, sdk_configurator

NAME = "hms_otel"
# The agent instruments these itself (Django only once the app has set Django up).
_OWN_INSTRUMENTATIONS = frozenset(("django", "psycopg2", "psycopg", "redis", "dbapi"))


def _selected(variable: str) -> bool:
    return os.environ.get(variable, "").strip() == NAME


def _start_agent() -> None:
    from hms_otel_agent import agent

    try:
        agent.start()
    except agent.StrictConfigError:
        sys.stderr.flush()
        os._exit(2)


class HmsOtelDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        if not _selected("OTEL_PYTHON_DISTRO"):
            return
        # Configurators are loaded after the distro: make ours the one that runs.
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", NAME)
        _start_agent()

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        if _selected("OTEL_PYTHON_DISTRO") and entry_point.name in _OWN_INSTRUMENTATIONS:
            return
        super().load_instrumentor(entry_point, **kwargs)


_BaseConfigurator, _OTelSDKConfigurator = sdk_configurator()


class HmsOtelConfigurator(_BaseConfigurator):  # type: ignore[misc,valid-type]
    def _configure(self, **kwargs: Any) -> None:
        if _selected("OTEL_PYTHON_CONFIGURATOR") or _selected("OTEL_PYTHON_DISTRO"):
            _start_agent()
            return
        run_sdk_configurator(_OTelSDKConfigurator(), **kwargs)
