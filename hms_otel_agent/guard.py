"""The boundary between agent code and the application.

Every hook, patch and processor callback that runs on the application's threads goes
through here: an exception inside agent code is caught, logged once per component and
kind of error at WARNING, counted, and swallowed. The application's own exceptions never
pass through these guards (wrappers call the application outside the ``try``).

The log line names the exception type and where in the agent it was raised, never its
message: agent code handles SQL, cache keys and URLs, and messages echo the data that
failed (``invalid literal for int(): 'MRN-1234'``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

logger = logging.getLogger("hms_otel")


_lock = threading.Lock()
_errors: Counter[str] = Counter()
_seen: set[tuple[str, str]] = set()


def report(component: str, exc: BaseException) -> None:
    """Count an exception raised inside agent code; log the first of each kind."""
    try:
        kind = type(exc).__name__
        with _lock:
            _errors[component] += 1
            first = (component, kind) not in _seen
            if first and len(_seen) < 1000:
                _seen.add((component, kind))
        if first:
            logger.warning(
                "hms-otel: internal error in %s (%s%s); skipped, the application is unaffected. "
                "Further errors of this kind are only counted (metric hms.agent.errors).",
                component,
                kind,
                _where(exc),
            )
    except Exception:  # pragma: no cover - reporting must never fail the caller
        pass


def _where(exc: BaseException) -> str:
    """`` at hms_otel_agent/processors/grouping.py:123 in _finish_owner`` (the innermost frame)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    path = code.co_filename.replace(os.sep, "/")
    marker = path.rfind("/hms_otel_agent/")
    shown = path[marker + 1 :] if marker >= 0 else os.path.basename(path)
    return f" at {shown}:{tb.tb_lineno} in {code.co_name}"


def error_counts() -> dict[str, int]:
    with _lock:
        return dict(_errors)


def _after_fork_in_child() -> None:
    # A forked worker counts its own errors (it reports under its own service.instance.id),
    # and must not inherit a lock another thread of the parent held at fork time.
    global _lock
    _lock = threading.Lock()
    _errors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def reset_for_tests() -> None:
    with _lock:
        _errors.clear()
        _seen.clear()
