"""HTTP N+1: one endpoint called again and again with different ids under one owner span.

============== =================================================================================
http_n_plus_one ``HMS_OTEL_HTTP_N_PLUS_ONE_THRESHOLD`` (5) or more calls to one endpoint
               template (method, origin, templated path, query names) with at least two
               different URLs: a loop that fetches one item per call. One finding per template
               and code site.
============== =================================================================================

The same URL asked again is not this finding (nothing varies to batch). The fix against a FHIR
server is one search (``Patient?_id=a,b,c``, ``Observation?patient=a,b,c``) or a batch Bundle
(`signals.fhir`); otherwise a bulk endpoint taking the ids, or concurrent calls when the API
has none. Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import fhir
from hms_otel_agent.signals.http_calls import HttpCall, by_site, site_finding
from hms_otel_agent.signals.records import Finding, OwnerActivity

HTTP_N_PLUS_ONE = "http_n_plus_one"
KINDS = (HTTP_N_PLUS_ONE,)

GENERIC_FIX = (
    "fetch them in one request (the API's bulk or search endpoint taking the ids), or, when it "
    "has none, concurrently (httpx.AsyncClient with asyncio.gather, or a thread pool) with a "
    "bounded number in flight"
)


def fix_for(call: HttpCall) -> str:
    return fhir.batch_fix(call.method, call.path, call.query_names) or GENERIC_FIX


def varies(calls: list[HttpCall]) -> bool:
    """Different URLs behind one template (offline, without the raw URLs' hashes: assumed)."""
    hashes = {c.url_hash for c in calls}
    return None in hashes or len(hashes) > 1


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    findings = []
    for calls in by_site(activity.http_calls):
        if len(calls) < settings.http_n_plus_one_threshold:
            continue
        if not varies(calls):
            continue  # one URL asked again: nothing to batch
        first = calls[0]
        subject = f"{first.template} called"
        findings.append(site_finding(HTTP_N_PLUS_ONE, activity, calls, subject, fix_for(first)))
    return findings
