"""Outbound HTTP calls made one after the other that could run at the same time.

================= ==============================================================================
http_sequential   at least ``HMS_OTEL_HTTP_SEQUENTIAL_MIN_CALLS`` (3) calls to at least two
                  endpoints, none overlapping the next, each starting at most
                  ``HMS_OTEL_HTTP_SEQUENTIAL_MAX_GAP_MS`` (100 ms) after the previous ended, where
                  running them together would save ``HMS_OTEL_HTTP_SEQUENTIAL_MIN_SAVED_MS``
                  (100 ms) or more (their sum minus the longest). One finding per run.
================= ==============================================================================

After Sentry's consecutive-HTTP detector (``consecutive_http_detector.py``: consecutive,
non-overlapping calls, a bounded gap, a minimum time saved), with thresholds for calls inside
one request rather than across a page load. A short gap is the evidence that a call did not
wait on work done with the previous answer; the agent cannot see data dependencies, so the
hint says "if". Calls of an HTTP N+1 (`http_n_plus_one`) are left out: that finding's fix
(one batch request) is the better one. Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints, http_n_plus_one
from hms_otel_agent.signals.activity import Finding, OwnerActivity
from hms_otel_agent.signals.http_calls import HttpCall, by_template

HTTP_SEQUENTIAL = "http_sequential"
KINDS = (HTTP_SEQUENTIAL,)


def _runs(calls: list[HttpCall], max_gap_ns: float) -> list[list[HttpCall]]:
    runs: list[list[HttpCall]] = []
    current: list[HttpCall] = []
    for call in sorted(calls, key=lambda c: c.start_ns):
        if current:
            previous = current[-1]
            gap = call.start_ns - previous.end_ns
            if 0 <= gap <= max_gap_ns:
                current.append(call)
                continue
            runs.append(current)
        current = [call]
    if current:
        runs.append(current)
    return runs


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    if len(activity.http_calls) < settings.http_sequential_min_calls:
        return []
    batched = {
        template
        for template, calls in by_template(activity.http_calls).items()
        if len(calls) >= settings.http_n_plus_one_threshold and http_n_plus_one.varies(calls)
    }
    candidates = [c for c in activity.http_calls if c.template not in batched]
    findings = []
    owner = activity.name or activity.route
    for run in _runs(candidates, settings.http_sequential_max_gap_ms * 1e6):
        if len(run) < settings.http_sequential_min_calls:
            continue
        templates = list(dict.fromkeys(c.template for c in run))
        if len(templates) < 2:
            continue
        total_ns = sum(c.duration_ns for c in run)
        longest_ns = max(c.duration_ns for c in run)
        saved_ms = (total_ns - longest_ns) / 1e6
        if saved_ms < settings.http_sequential_min_saved_ms:
            continue
        location = run[0].location
        fix = (
            f"if no call needs another's answer, run them concurrently (httpx.AsyncClient with "
            f"asyncio.gather, or concurrent.futures.ThreadPoolExecutor): about {longest_ns / 1e6:.0f} ms "
            f"instead of {total_ns / 1e6:.0f} ms"
        )
        subject = f"calls one after another to {', '.join(templates)}"
        findings.append(
            Finding(
                kind=HTTP_SEQUENTIAL,
                fingerprint=hints.site_fingerprint(HTTP_SEQUENTIAL, "\x1e".join(sorted(templates)), location),
                repetitions=len(run),
                duration_ms=total_ns / 1e6,
                location=location,
                fix=fix,
                hint=hints.sentence(owner, subject, len(run), total_ns / 1e6, location, fix),
                route=activity.route,
                subject=", ".join(templates),
                members=tuple(templates),
            )
        )
    return findings
