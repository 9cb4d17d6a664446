"""The boundary between agent code and the application.

Every hook, patch and processor callback that runs on the application's threads goes
through here: an exception inside agent code is caught, logged once per component and
kind of error at WARNING, counted, and swallowed. The application's own exceptions never
pass through these guards (wrappers call the application outside the ``try``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("hms_otel")

F = TypeVar("F", bound=Callable[..., Any])

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
                "hms-otel: internal error in %s (%s: %s); skipped, the application is unaffected. "
                "Further errors of this kind are only counted (metric hms.agent.errors).",
                component,
                kind,
                _short(exc),
            )
    except Exception:  # pragma: no cover - reporting must never fail the caller
        pass


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def guarded(component: str, default: Any = None) -> Callable[[F], F]:
    """Decorate agent code that must never raise into the application."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                report(component, exc)
                return default

        return wrapper  # type: ignore[return-value]

    return decorate


def error_counts() -> dict[str, int]:
    with _lock:
        return dict(_errors)


def reset_for_tests() -> None:
    with _lock:
        _errors.clear()
        _seen.clear()
