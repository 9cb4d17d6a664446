"""hms-otel-agent: OpenTelemetry for Django on PostgreSQL and Redis that explains slow requests.

The public API is small: `start()` for applications that cannot change their launch
command (call it at the top of wsgi.py / asgi.py, or in gunicorn's ``post_fork``), and
`__version__`. Importing the package does nothing else.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "start"]


def start() -> bool:
    """Configure the agent from the environment and instrument the process.

    Safe to call more than once; returns True only on the call that started it.
    """
    from hms_otel_agent.agent import start as _start

    return _start()
