"""Slow outbound HTTP calls under one owner span.

============== =================================================================================
http_slow_call one call that took ``HMS_OTEL_HTTP_SLOW_MS`` (1000 ms) or longer; one finding per
               endpoint template and code site, every slow call counted
============== =================================================================================

Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints
from hms_otel_agent.signals.activity import CodeLocation, Finding, OwnerActivity, most_common, total_ms
from hms_otel_agent.signals.http_calls import HttpCall

HTTP_SLOW_CALL = "http_slow_call"
KINDS = (HTTP_SLOW_CALL,)

FIX = (
    "keep it off the request path (cache the answer with a TTL, or fetch it in a background job "
    "and read the stored result), and give the call a timeout shorter than the page's budget"
)


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    slow_ns = settings.http_slow_ms * 1e6
    groups: dict[tuple[str, str, str], list[HttpCall]] = {}
    for call in activity.http_calls:
        if call.duration_ns >= slow_ns:
            at = call.location
            site = (at.file, at.function) if at is not None else ("", "")
            groups.setdefault((call.template, *site), []).append(call)
    findings = []
    owner = activity.name or activity.route
    for calls in groups.values():
        first = calls[0]
        location: CodeLocation | None = most_common(c.location for c in calls)
        duration_ms = total_ms(calls)
        slowest = max(c.duration_ns for c in calls) / 1e6
        subject = f"slow call {first.template} (up to {slowest:.0f} ms)"
        findings.append(
            Finding(
                kind=HTTP_SLOW_CALL,
                fingerprint=hints.site_fingerprint(HTTP_SLOW_CALL, first.template, location),
                repetitions=len(calls),
                duration_ms=duration_ms,
                location=location,
                fix=FIX,
                hint=hints.sentence(owner, subject, len(calls), duration_ms, location, FIX),
                route=activity.route,
                subject=first.template,
            )
        )
    return findings
