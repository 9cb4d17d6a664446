"""Outbound HTTP calls under one owner span, as plain records the HTTP detectors read.

The live instrumentation (`instrument/http_client.py`) fills `HttpCall` from the client
span's request hook; `hms-otel analyze` from the exported client span. Only the safe form
of the URL is kept (`signals.urls`: templated path, query values ``REDACTED``); the raw URL
stays in the process as a hash that tells a loop over ids (different URLs, one template) from
the same URL asked again. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from hms_otel_agent.signals.activity import CodeLocation

__all__ = ["HTTP_CLIENT_SCOPES", "HttpCall", "by_template"]

# The contrib instrumentations whose client spans are outbound calls (`instrument.http_client`).
HTTP_CLIENT_SCOPES = frozenset(
    (
        "opentelemetry.instrumentation.requests",
        "opentelemetry.instrumentation.httpx",
        "opentelemetry.instrumentation.urllib3",
    )
)


@dataclass(slots=True)
class HttpCall:
    method: str  # GET, POST, ...
    url: str  # scheme://host:port/path?query, path templated and query values REDACTED
    start_ns: int = 0
    duration_ns: int = 0
    status_code: int = 0  # 0: no response (an error, or not known)
    timeout: bool | None = None  # False: the client was told no timeout; None: not known
    url_hash: int | None = None  # of the raw URL; never exported (None offline: not known)
    location: CodeLocation | None = None
    library: str = ""  # requests, httpx, urllib3 ("" offline)

    @property
    def template(self) -> str:
        """What one endpoint is called: ``GET http://fhir:8080/fhir/Patient/{id}``."""
        return f"{self.method} {self.url}"

    @property
    def path(self) -> str:
        """The templated path, without origin and query."""
        rest = self.url.partition("://")[2] if "://" in self.url else self.url
        if "://" in self.url:
            rest = "/" + rest.partition("/")[2] if "/" in rest else "/"
        return rest.partition("?")[0]

    @property
    def query_names(self) -> tuple[str, ...]:
        """The names of the query's parameters that `signals.urls` kept (``patient``, ``_count``)."""
        query = self.url.partition("?")[2]
        return tuple(dict.fromkeys(p.partition("=")[0] for p in query.split("&") if "=" in p))

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


def by_template(calls: list[HttpCall]) -> dict[str, list[HttpCall]]:
    """The calls grouped by endpoint template, in order of first call."""
    groups: dict[str, list[HttpCall]] = {}
    for call in calls:
        groups.setdefault(call.template, []).append(call)
    return groups
