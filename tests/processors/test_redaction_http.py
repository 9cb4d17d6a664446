"""URLs, the user agent and captured headers of Django's server spans and of the duration
metric, in-process over the sample app (the byte-level check over OTLP:
tests/reliability/test_phi_urls.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness.traced import Traced

from hms_otel_agent.instrument import django_server
from hms_otel_agent.signals.http_privacy import HttpPrivacy

NAME, MRN = "Quill" + "feather", "MRN-" + "QZ7731X"
UA = f"Mozilla/5.0 (X11; Linux x86_64; {NAME}'s laptop) Gecko/20100101 Firefox/120.0"


def exported(traced: Traced) -> str:
    parts = []
    for span in traced.spans():
        parts += [span.name, repr(dict(span.attributes or {}))]
        parts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    return "\n".join(parts)


def duration_targets(traced: Traced) -> list[str]:
    return [str(p.attributes.get("http.target")) for p in traced.metric_points("http.server.duration")]


def test_route_literals_are_read_from_the_app(traced: Traced) -> None:
    traced.request("/health/")
    literals = django_server.route_literals()
    assert literals is not None
    # The sample's own routes and the admin's (an include), nothing else: no language codes
    # without i18n_patterns(), no placeholder.
    assert {
        "patients",
        "summary",
        "search",
        "encounters",
        "admin",
        "optimized",
        "login",
        "password_change",
    } <= literals
    assert not literals & {"en", "de", "pk", "<int:pk>", "int", ""}


def test_an_unrouted_path_in_the_span_and_the_metric(traced: Traced) -> None:
    raw = f"/patients/{MRN}/{NAME.lower()}/?q={NAME}&page=2"
    response, server = traced.request(raw, REQUEST_URI=raw, HTTP_USER_AGENT=UA)
    assert response.status_code == 404
    assert server.attributes["http.target"] == "/patients/{id}/{id}/?q=REDACTED&page=2"
    assert server.name == "GET"
    assert (
        NAME not in exported(traced) and NAME.lower() not in exported(traced) and MRN not in exported(traced)
    )
    targets = duration_targets(traced)
    assert "/patients/{id}/{id}/?q=REDACTED&page=2" in targets
    assert not any(NAME.lower() in t.lower() or MRN in t for t in targets), targets
    # Without REQUEST_URI (runserver, the test client) the contrib sets http.url instead.
    _, server = traced.request(raw)
    assert server.attributes["http.url"] == "http://testserver/patients/{id}/{id}/?q=REDACTED&page=2"


def test_a_routed_path_is_its_route(traced: Traced) -> None:
    raw = f"/patients/1/summary/?page=2&mrn={MRN}"
    response, server = traced.request(raw, REQUEST_URI=raw)
    assert response.status_code == 200
    assert server.attributes["http.target"] == "/patients/{pk}/summary/?page=2&mrn=REDACTED"
    assert server.attributes["http.route"] == "patients/<int:pk>/summary/"
    assert "patients/<int:pk>/summary/" in duration_targets(traced)  # the contrib's own choice


def test_the_user_agent_is_reduced_to_its_family(traced: Traced) -> None:
    _, server = traced.request("/health/", HTTP_USER_AGENT=UA)
    attributes = server.attributes
    assert "http.user_agent" not in attributes and "user_agent.original" not in attributes
    assert (
        attributes["user_agent.name"],
        attributes["user_agent.version"],
        attributes["user_agent.os.name"],
    ) == (
        "Firefox",
        "120",
        "Linux",
    )
    _, server = traced.request("/health/", HTTP_USER_AGENT=f"{NAME}-Tablet/3")
    assert not any(k.startswith("user_agent.") or k == "http.user_agent" for k in server.attributes)


@pytest.fixture
def header_capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The contrib reads these on every request.
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "authorization,cookie,x-patient-mrn,x-.*,content-type,accept-language,referer,user-agent",
    )
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type,x-frame-options"
    )
    yield


HEADERS: dict[str, Any] = {
    "HTTP_AUTHORIZATION": f"Bearer token-of-{NAME}",
    "HTTP_COOKIE": f"sessionid=abc; patient={MRN}",
    "HTTP_X_PATIENT_MRN": MRN,
    "HTTP_X_PATIENT_NAME": NAME,
    "HTTP_X_MRN_QZ7731X": "1",
    "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.9",
    "HTTP_REFERER": f"http://testserver/patients/{MRN}/?q={NAME}",
    "HTTP_USER_AGENT": UA,
}


def test_captured_headers_are_redacted_but_safe_ones(traced: Traced, header_capture: None) -> None:
    _, server = traced.request("/health/", **HEADERS)
    attributes = server.attributes
    assert attributes["http.request.header.authorization"] == ("REDACTED",)
    assert attributes["http.request.header.cookie"] == ("REDACTED",)
    assert attributes["http.request.header.x_patient_mrn"] == ("REDACTED",)  # listed by name
    # Matched by x-.* only: named by the client, possibly after a patient: not exported.
    assert "http.request.header.x_patient_name" not in attributes
    assert "http.request.header.x_mrn_qz7731x" not in attributes
    assert attributes["http.request.header.accept_language"] == ("en-US,en;q=0.9",)
    assert attributes["http.request.header.referer"] == ("http://testserver/patients/{id}/?q=REDACTED",)
    assert attributes["http.request.header.user_agent"] == ("Firefox 120 / Linux",)
    assert attributes["http.response.header.content_type"] == ("application/json",)
    text = exported(traced)
    assert NAME not in text and MRN not in text and "token-of" not in text and "sessionid" not in text


def test_each_opt_in_exports_what_it_promises_and_nothing_else(
    traced: Traced, header_capture: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = f"/patients/{MRN}/?ward=4B&mrn={MRN}"
    with traced.use_settings(capture_url_paths=True):
        _, server = traced.request(raw, REQUEST_URI=raw, **HEADERS)
    assert server.attributes["http.target"] == f"/patients/{MRN}/?ward=REDACTED&mrn=REDACTED"
    assert server.attributes["http.request.header.x_patient_mrn"] == ("REDACTED",)
    assert "user_agent.original" not in server.attributes and "http.user_agent" not in server.attributes
    with traced.use_settings(capture_query_values=True):
        _, server = traced.request(raw, REQUEST_URI=raw)
    assert server.attributes["http.target"] == "/patients/{id}/?ward=4B&mrn=REDACTED"
    with traced.use_settings(capture_user_agent=True):
        _, server = traced.request("/health/", **HEADERS)
    assert server.attributes["http.user_agent"] == UA
    assert server.attributes["http.request.header.user_agent"] == (UA,)
    assert server.attributes["http.request.header.referer"] == (
        "http://testserver/patients/{id}/?q=REDACTED",
    )
    with traced.use_settings(capture_header_values=True, redact_headers=("x-patient-name",)):
        _, server = traced.request("/health/", **HEADERS)
    assert server.attributes["http.request.header.x_patient_mrn"] == (MRN,)
    assert server.attributes["http.request.header.x_mrn_qz7731x"] == ("1",)
    assert server.attributes["http.request.header.x_patient_name"] == ("REDACTED",)
    assert server.attributes["http.request.header.authorization"] == ("REDACTED",)
    assert "http.user_agent" not in server.attributes
    # The duration metric follows the agent's settings (set when Django is instrumented).
    monkeypatch.setattr(django_server, "_privacy", HttpPrivacy(raw_paths=True))
    traced.request(raw, REQUEST_URI=raw)
    assert f"/patients/{MRN}/?ward=REDACTED&mrn=REDACTED" in duration_targets(traced)


def test_a_failing_request_hook_drops_the_dimension(traced: Traced, monkeypatch: pytest.MonkeyPatch) -> None:
    from hms_otel_agent import guard

    class Broken(HttpPrivacy):
        def target(self, *args: Any, **kwargs: Any) -> str:
            raise RuntimeError(MRN)

    monkeypatch.setattr(django_server, "_privacy", Broken())
    guard.reset_for_tests()
    raw = f"/no/such/{NAME}/"
    response, _ = traced.request(raw, REQUEST_URI=raw)
    assert response.status_code == 404
    assert "Django request hook" in guard.error_counts()
    assert not any(NAME in t for t in duration_targets(traced))


def test_request_attributes_the_user_had_recorded(traced: Traced, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS records request attributes under their own names:
    paths are templated, a few plain ones kept, the request's data REDACTED."""
    from opentelemetry.instrumentation.django.middleware.otel_middleware import _DjangoMiddleware

    names = ["path_info", "path", "method", "content_type", "GET", "COOKIES", "body"]
    monkeypatch.setattr(_DjangoMiddleware, "_traced_request_attrs", names)
    monkeypatch.setattr(django_server, "_traced_attributes", tuple(names))
    raw = f"/patients/{MRN}/?q={NAME}"
    response, server = traced.request(raw, HTTP_COOKIE=f"last={MRN}")
    assert response.status_code == 404
    attributes = server.attributes
    assert attributes["path_info"] == attributes["path"] == "/patients/{id}/"
    assert attributes["method"] == "GET" and attributes["content_type"] == ""  # as the test client sends it
    assert attributes["GET"] == attributes["COOKIES"] == attributes["body"] == "REDACTED"
    assert MRN not in exported(traced) and NAME not in exported(traced)
