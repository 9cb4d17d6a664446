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
from hms_otel_agent.signals.http_calls import HttpCall, by_site, site_finding
from hms_otel_agent.signals.records import Finding, OwnerActivity

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
    findings = []
    for calls in by_site(c for c in activity.http_calls if c.timeout is False):
        first = calls[0]
        subject = f"{first.template} called without a timeout"
        findings.append(site_finding(HTTP_NO_TIMEOUT, activity, calls, subject, fix_for(first)))
    return findings
