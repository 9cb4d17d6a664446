"""hms-otel-agent: OpenTelemetry for Django on PostgreSQL and Redis that explains slow requests.

The public API is small: `start()` for applications that cannot change their launch
command (call it at the top of wsgi.py / asgi.py, or in gunicorn's ``post_fork``),
`unit_of_work` for work outside requests (``with hms_otel_agent.unit_of_work("nightly-import"):``
or as a decorator: its queries are grouped and their N+1s found there), and `__version__`.
Importing the package does nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "start", "unit_of_work"]

if TYPE_CHECKING:
    from hms_otel_agent.instrument.units import unit_of_work


def __getattr__(name: str) -> Any:
    if name == "unit_of_work":  # imported when used: importing the package stays free
        from hms_otel_agent.instrument.units import unit_of_work

        return unit_of_work
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start() -> bool:
    """Configure the agent from the environment and instrument the process.

    Safe to call more than once; returns True only on the call that started it.
    """
    from hms_otel_agent.agent import start as _start

    return _start()
