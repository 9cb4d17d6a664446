"""Outbound HTTP calls under one owner span (`activity.HttpCall`), as the HTTP detectors read them.

The live instrumentation (`instrument/http_client.py`) fills `HttpCall` from the client
span's request hook; `hms-otel analyze` from the exported client span. Only the safe form
of the URL is kept (`signals.urls`: templated path, query values ``REDACTED``); the raw URL
stays in the process as a hash that tells a loop over ids (different URLs, one template) from
the same URL asked again. Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.signals.activity import HttpCall

__all__ = ["HttpCall", "by_template"]


def by_template(calls: list[HttpCall]) -> dict[str, list[HttpCall]]:
    """The calls grouped by endpoint template, in order of first call."""
    groups: dict[str, list[HttpCall]] = {}
    for call in calls:
        groups.setdefault(call.template, []).append(call)
    return groups
