"""Outbound HTTP calls under one owner span (`activity.HttpCall`), as the HTTP detectors read them.

The live instrumentation (`instrument/http_client.py`) fills `HttpCall` from the client
span's request hook; `hms-otel analyze` from the exported client span. Only the safe form
of the URL is kept (`signals.urls`: templated path, query values ``REDACTED``); the raw URL
stays in the process as a hash that tells a loop over ids (different URLs, one template) from
the same URL asked again. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable

from hms_otel_agent.signals import hints
from hms_otel_agent.signals.records import (
    CodeLocation,
    Finding,
    HttpCall,
    OwnerActivity,
    most_common,
    total_ms,
)

__all__ = ["HttpCall", "by_site", "by_template", "site_finding"]


def by_template(calls: list[HttpCall]) -> dict[str, list[HttpCall]]:
    """The calls grouped by endpoint template, in order of first call."""
    groups: dict[str, list[HttpCall]] = {}
    for call in calls:
        groups.setdefault(call.template, []).append(call)
    return groups


def by_site(calls: Iterable[HttpCall]) -> list[list[HttpCall]]:
    """The calls grouped by endpoint template and code site (file, function), in order of first call."""
    groups: dict[tuple[str, str, str], list[HttpCall]] = {}
    for call in calls:
        at = call.location
        site = (at.file, at.function) if at is not None else ("", "")
        groups.setdefault((call.template, *site), []).append(call)
    return list(groups.values())


def site_finding(
    kind: str, activity: OwnerActivity, calls: list[HttpCall], subject: str, fix: str
) -> Finding:
    """One finding for a group of `by_site` calls: every call counted, at their most common location."""
    template = calls[0].template
    location: CodeLocation | None = most_common(c.location for c in calls)
    duration_ms = total_ms(calls)
    owner = activity.name or activity.route
    return Finding(
        kind=kind,
        fingerprint=hints.site_fingerprint(kind, template, location),
        repetitions=len(calls),
        duration_ms=duration_ms,
        location=location,
        fix=fix,
        hint=hints.sentence(owner, subject, len(calls), duration_ms, location, fix),
        route=activity.route,
        subject=template,
    )
