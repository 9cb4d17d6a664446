"""Which span is whose: the owner rule the live span processor and the offline report share.

The owner of a DB or cache client span is its nearest ancestor that is neither; a cache span
under another cache span (a Redis command under a Django cache call) is not counted again: the
call is what counts. Roles come from the instrumentation scope; the offline side adds
attribute-based rules for spans of other producers (report/spans.py), the live side sees only
the agent's own scopes. What an owner records is `records.OwnerActivity`'s job (its per-owner
cap included).
"""

from __future__ import annotations

from hms_otel_agent.signals.vocabulary import CACHE_SCOPES, DB_SCOPES, DJANGO_CACHE_SCOPE

OWNER, DB, CACHE = 0, 1, 2


def scope_role(scope: str) -> int:
    """DB, CACHE or OWNER by the span's instrumentation scope."""
    if scope in DB_SCOPES:
        return DB
    if scope in CACHE_SCOPES:
        return CACHE
    return OWNER


def counted(role: int, scope: str, parent_role: int) -> bool:
    """False for a cache span under a cache span that is not itself a Django cache call (the
    Redis commands of a Django cache call): only the call counts."""
    return not (role == CACHE and parent_role == CACHE and scope != DJANGO_CACHE_SCOPE)


def is_client(scope: str) -> bool:
    """A DB or cache client span by its scope (never carries a URL)."""
    return scope in DB_SCOPES or scope in CACHE_SCOPES
