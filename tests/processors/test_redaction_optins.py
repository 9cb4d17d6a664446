"""The privacy opt-ins not covered by the URL tests (test_redaction_http.py): each exports what it
promises and nothing else, in-process over the sample app (issue 13's "each opt-in is tested to
export what it promises and nothing else").

HMS_OTEL_CAPTURE_EXCEPTION_MESSAGES: exception messages and status descriptions as raised -- and
still no raw path or query value. HMS_OTEL_CAPTURE_CLIENT_ADDRESS: the client's address -- and still
no user agent, raw path or query value.
"""

from __future__ import annotations

from harness.traced import Traced

MRN = "MRN-" + "QZ7731X"
NAME = "Quill" + "feather"
UA = f"Mozilla/5.0 (X11; Linux x86_64; {NAME}'s laptop) Gecko/20100101 Firefox/120.0"


def everything(traced: Traced) -> str:
    parts = []
    for span in traced.spans():
        parts += [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
        parts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    return "\n".join(parts)


def target(attributes: dict[str, object]) -> str:
    """The request target, in either generation of the HTTP conventions."""
    if "http.target" in attributes:
        return str(attributes["http.target"])
    return f"{attributes.get('url.path')}?{attributes.get('url.query')}"


def exception_events(traced: Traced) -> list[dict[str, object]]:
    return [dict(e.attributes or {}) for s in traced.spans() for e in s.events if e.name == "exception"]


def test_exception_messages_are_redacted_by_default(traced: Traced) -> None:
    response, _ = traced.request(f"/boom/?mrn={MRN}", HTTP_USER_AGENT=UA)
    assert response.status_code == 500
    events = exception_events(traced)
    assert events and all(e["exception.type"] == "ValueError" for e in events)
    assert all(e["exception.message"] == "ValueError (message redacted)" for e in events), events
    assert MRN not in everything(traced)


def test_capture_exception_messages_exports_the_message_and_nothing_else(traced: Traced) -> None:
    with traced.use_settings(capture_exception_messages=True):
        raw = f"/boom/?mrn={MRN}&ward=4B"
        response, server = traced.request(raw, REQUEST_URI=raw, HTTP_USER_AGENT=UA)
    assert response.status_code == 500
    events = exception_events(traced)
    assert events and all(e["exception.message"] == f"bad patient {MRN}" for e in events), events
    assert any(f"ValueError: bad patient {MRN}" in str(e.get("exception.stacktrace")) for e in events)
    # nothing else: the query values, the user agent and the client address stay out
    attributes = dict(server.attributes or {})
    assert target(attributes) == "/boom/?mrn=REDACTED&ward=REDACTED", attributes
    assert "http.user_agent" not in attributes and "user_agent.original" not in attributes
    assert not {"client.address", "net.peer.ip"} & set(attributes)
    text = everything(traced)
    assert NAME not in text
    assert text.count(MRN) == sum(str(e).count(MRN) for e in events) + str(
        [s.status.description for s in traced.spans()]
    ).count(MRN)


def test_capture_client_address_exports_the_address_and_nothing_else(traced: Traced) -> None:
    raw = f"/patients/{MRN}/?mrn={MRN}"
    _, server = traced.request(raw, REQUEST_URI=raw, REMOTE_ADDR="10.1.2.3", HTTP_USER_AGENT=UA)
    assert not {"client.address", "net.peer.ip"} & set(server.attributes or {})
    assert "10.1.2.3" not in everything(traced)
    with traced.use_settings(capture_client_address=True):
        _, server = traced.request(raw, REQUEST_URI=raw, REMOTE_ADDR="10.1.2.3", HTTP_USER_AGENT=UA)
    attributes = dict(server.attributes or {})
    assert "10.1.2.3" in {attributes.get("client.address"), attributes.get("net.peer.ip")}, attributes
    # nothing else
    assert target(attributes) == "/patients/{id}/?mrn=REDACTED"
    assert "http.user_agent" not in attributes and "user_agent.original" not in attributes
    text = everything(traced)
    assert MRN not in text and NAME not in text
