"""Build OTLP/JSON trace requests by hand, as the agent or the collector's file exporter writes them."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

_ids = itertools.count(1)
SERVER, CLIENT, INTERNAL = 2, 3, 1
PSYCOPG = "opentelemetry.instrumentation.psycopg"
DJANGO = "opentelemetry.instrumentation.django"

PATIENT_SQL = 'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."id" = ? LIMIT ?'


def new_trace() -> str:
    return f"{next(_ids):032x}"


def new_span_id() -> str:
    return f"{next(_ids):016x}"


def value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    return {"stringValue": str(v)}


def attrs(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in mapping.items()]


def span(
    trace: str,
    span_id: str,
    parent: str = "",
    name: str = "span",
    kind: int | str = INTERNAL,
    start: int = 1_000_000_000,
    duration_ms: float = 1.0,
    attributes: dict[str, Any] | None = None,
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": trace,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + int(duration_ms * 1e6)),
        "attributes": attrs(attributes or {}),
        "status": {},
    }
    if parent:
        out["parentSpanId"] = parent
    if events:
        out["events"] = [{"timeUnixNano": str(start), "name": n, "attributes": attrs(a)} for n, a in events]
    out.update(extra)
    return out


def request(
    scopes: dict[str, list[dict[str, Any]]], resource: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attrs(resource or {"service.name": "svc"})},
                "scopeSpans": [
                    {"scope": {"name": scope, "version": "1"}, "spans": spans}
                    for scope, spans in scopes.items()
                ],
            }
        ]
    }


def n_plus_one_request(
    repetitions: int = 6,
    *,
    route: str = "encounters/",
    with_parent: bool = True,
    resource: dict[str, Any] | None = None,
    sql_attr: str = "db.statement",
    agent_attributes: bool = True,
    start: int = 1_000_000_000,
) -> dict[str, Any]:
    """One request span with `repetitions` identical lazy loads (SQL-level: no ORM attributes)."""
    trace = new_trace()
    server = new_span_id()
    db = []
    for i in range(repetitions):
        attributes: dict[str, Any] = {"db.system": "postgresql", sql_attr: PATIENT_SQL}
        if agent_attributes:
            attributes.update(
                {"code.file.path": "hms/views.py", "code.line.number": 42, "code.function.name": "encounters"}
            )
        db.append(
            span(trace, new_span_id(), server, "SELECT", CLIENT, start + i * 2_000_000, 1.0, attributes)
        )
    scopes: dict[str, list[dict[str, Any]]] = {PSYCOPG if agent_attributes else "other.sql": db}
    if with_parent:
        scopes[DJANGO] = [span(trace, server, "", f"GET {route}", SERVER, start, 50.0, {"http.route": route})]
    return request(scopes, resource)


def b64_ids(node: Any) -> Any:
    """The same request with ids in base64 (protobuf's generic JSON mapping)."""
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str) and v
            else b64_ids(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [b64_ids(v) for v in node]
    return node


def write_lines(path: Path, *requests: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path
