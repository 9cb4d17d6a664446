"""Slow outbound HTTP calls under one owner span.

============== =================================================================================
http_slow_call one call that took ``HMS_OTEL_HTTP_SLOW_MS`` (1000 ms) or longer; one finding per
               endpoint template and code site, every slow call counted
============== =================================================================================

Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals.http_calls import by_site, site_finding
from hms_otel_agent.signals.records import Finding, OwnerActivity

HTTP_SLOW_CALL = "http_slow_call"
KINDS = (HTTP_SLOW_CALL,)

FIX = (
    "keep it off the request path (cache the answer with a TTL, or fetch it in a background job "
    "and read the stored result), and give the call a timeout shorter than the page's budget"
)


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    slow_ns = settings.http_slow_ms * 1e6
    findings = []
    for calls in by_site(c for c in activity.http_calls if c.duration_ns >= slow_ns):
        slowest = max(c.duration_ns for c in calls) / 1e6
        subject = f"slow call {calls[0].template} (up to {slowest:.0f} ms)"
        findings.append(site_finding(HTTP_SLOW_CALL, activity, calls, subject, FIX))
    return findings
