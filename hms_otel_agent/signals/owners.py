"""Which span is whose: the owner rule the live span processor and the offline report share.

The owner of a DB, cache, outbound HTTP or template span is its nearest ancestor that is none of
them; a cache span under another cache span (a Redis command under a Django cache call) is not
counted again: the call is what counts. Roles come from the instrumentation scope; the offline side adds
attribute-based rules for spans of other producers (report/spans.py), the live side sees only
the agent's own scopes. What an owner records is `records.OwnerActivity`'s job (its per-owner
cap included).
"""

from __future__ import annotations

from hms_otel_agent.signals import time_split
from hms_otel_agent.signals.vocabulary import (
    CACHE_SCOPES,
    DB_SCOPES,
    DJANGO_CACHE_SCOPE,
    HTTP_CLIENT_SCOPES,
    TEMPLATE_SCOPE,
)

OWNER, DB, CACHE, HTTP, TEMPLATE = 0, 1, 2, 3, 4
URL_ROLES = (OWNER, HTTP)  # spans whose attributes may hold a URL (template spans: a name)
# The part of the owner's time split (signals/time_split.py) each kind of child span is.
TIME_PART = {DB: time_split.DB, CACHE: time_split.CACHE, HTTP: time_split.HTTP, TEMPLATE: time_split.TEMPLATE}


def scope_role(scope: str) -> int:
    """DB, CACHE, HTTP (an outbound call), TEMPLATE or OWNER by the instrumentation scope."""
    if scope in DB_SCOPES:
        return DB
    if scope in CACHE_SCOPES:
        return CACHE
    if scope in HTTP_CLIENT_SCOPES:
        return HTTP
    if scope == TEMPLATE_SCOPE:
        return TEMPLATE
    return OWNER


def counted(role: int, scope: str, parent_role: int) -> bool:
    """False for a cache span under a cache span that is not itself a Django cache call (the
    Redis commands of a Django cache call): only the call counts."""
    return not (role == CACHE and parent_role == CACHE and scope != DJANGO_CACHE_SCOPE)


def is_client(scope: str) -> bool:
    """A DB or cache client span by its scope (never carries a URL)."""
    return scope in DB_SCOPES or scope in CACHE_SCOPES
