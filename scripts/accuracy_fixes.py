"""Fixes applied by hand for the accuracy study (scripts/accuracy_run.py count --fix ID).

Each fix changes the application at run time the way a developer would edit it (a view's
queryset, a serializer's prefetch, an admin option), so that its effect is measured on the
unchanged checkout: query count before/after, and the page's status. The agent's own
suggestion, applied literally, is a fix here too (ids ending in ``-agent``): a suggestion that
breaks the page shows up as status 599 with the exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FIXES: dict[str, dict[str, Callable[[], None]]] = {"netbox": {}, "babybuddy": {}}


def fix(app: str, name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        FIXES[app][name] = fn
        return fn

    return register


def apply(app: str, name: str) -> None:
    FIXES[app][name]()


def _add(cls: Any, attr: str, method: str, *lookups: Any) -> None:
    """cls.attr = getattr(cls.attr, method)(*lookups): edit a view's or viewset's queryset."""
    setattr(cls, attr, getattr(getattr(cls, attr), method)(*lookups))
