"""Outbound HTTP calls made without a timeout, when the client shows it.

=============== ================================================================================
http_no_timeout a call whose client was told to wait forever: requests without ``timeout=``
                (requests' default), httpx with ``timeout=None`` (connect or read unbounded).
                One finding per endpoint template and code site. urllib3 calls are not judged
                (its default is the socket's, which the agent cannot see).
=============== ================================================================================

A server that stops answering then holds the worker (and the patient's page) until the
process is killed. Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints
from hms_otel_agent.signals.activity import CodeLocation, Finding, OwnerActivity, most_common, total_ms
from hms_otel_agent.signals.http_calls import HttpCall

HTTP_NO_TIMEOUT = "http_no_timeout"
KINDS = (HTTP_NO_TIMEOUT,)

_FIXES = {
    "requests": "pass timeout=(3.05, 10) (connect, read seconds) to the requests call",
    "httpx": "give the client or call a timeout: httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0))",
}
_FIX = "give the call a connect and a read timeout"


def fix_for(call: HttpCall) -> str:
    return _FIXES.get(call.library, _FIX)


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    groups: dict[tuple[str, str, str], list[HttpCall]] = {}
    for call in activity.http_calls:
        if call.timeout is False:
            at = call.location
            site = (at.file, at.function) if at is not None else ("", "")
            groups.setdefault((call.template, *site), []).append(call)
    findings = []
    owner = activity.name or activity.route
    for calls in groups.values():
        first = calls[0]
        location: CodeLocation | None = most_common(c.location for c in calls)
        fix = fix_for(first)
        duration_ms = total_ms(calls)
        subject = f"{first.template} called without a timeout"
        findings.append(
            Finding(
                kind=HTTP_NO_TIMEOUT,
                fingerprint=hints.site_fingerprint(HTTP_NO_TIMEOUT, first.template, location),
                repetitions=len(calls),
                duration_ms=duration_ms,
                location=location,
                fix=fix,
                hint=hints.sentence(owner, subject, len(calls), duration_ms, location, fix),
                route=activity.route,
                subject=first.template,
            )
        )
    return findings
