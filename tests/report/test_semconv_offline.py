"""The offline analyzer reads either generation of semantic-convention names (signals/semconv.py):
the same spans written with the old names, the stable names or both give the same findings.

Spans from another service (no ``hms.db.fingerprint``, no agent scope) are the case that depends
on the names: the statement, the database system and the parameters are all the analyzer has.
The end-to-end twin, over what a real run of each OTEL_SEMCONV_STABILITY_OPT_IN value exported,
is tests/e2e/test_semconv_generations.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hms_otel_agent import config
from hms_otel_agent.report.build import detect, registered_detectors
from hms_otel_agent.report.otlp import read_paths
from hms_otel_agent.report.spans import build_owners
from hms_otel_agent.signals.semconv import REPLACED, Mode, mode, split_host_port, stable_value

from .otlp_builder import CLIENT, SERVER, new_span_id, new_trace, request, span, write_lines

SQL = 'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."id" = %s'
OLD_OF = {stable: olds[0] for stable, olds in REPLACED.items()}


def stable_request(route: str, parameters: list[int]) -> dict[str, Any]:
    """One request whose SQL spans (another service's: no agent attributes) carry stable names."""
    trace, server = new_trace(), new_span_id()
    db = []
    for i, value in enumerate(parameters):
        attributes = {
            "db.system.name": "postgresql",
            "db.query.text": SQL,
            "db.namespace": "hms",
            "db.query.parameter.0": str(value),
            "code.file.path": "hms/views.py",
            "code.line.number": 42,
            "code.function.name": "encounters",
        }
        db.append(
            span(
                trace,
                new_span_id(),
                server,
                "SELECT hms_patient",
                CLIENT,
                1_000_000_000 + i * 2_000_000,
                1.0,
                attributes,
            )
        )
    web = span(
        trace,
        server,
        "",
        f"GET {route}",
        SERVER,
        1_000_000_000,
        50.0,
        {"http.route": route, "http.request.method": "GET"},
    )
    return request({"other.sql": db, "opentelemetry.instrumentation.django": [web]})


def to_generation(node: Any, generation: str) -> Any:
    """The request with each stable name renamed to its old one ("old") or doubled ("dup"); the
    parameters as the old single attribute."""
    if isinstance(node, list):
        if node and isinstance(node[0], dict) and "key" in node[0] and "value" in node[0]:
            return _attributes(node, generation)
        return [to_generation(v, generation) for v in node]
    if isinstance(node, dict):
        return {k: to_generation(v, generation) for k, v in node.items()}
    return node


def _attributes(items: list[dict[str, Any]], generation: str) -> list[dict[str, Any]]:
    out = []
    parameters = [i["value"]["stringValue"] for i in items if i["key"].startswith("db.query.parameter.")]
    for item in items:
        key = item["key"]
        if key.startswith("db.query.parameter."):
            if generation == "dup":
                out.append(item)
            continue
        if key in OLD_OF:
            out.append({"key": OLD_OF[key], "value": item["value"]})
            if generation == "dup":
                out.append(item)
        else:
            out.append(item)
    if parameters:
        out.append(
            {"key": "db.statement.parameters", "value": {"stringValue": f"({', '.join(parameters)},)"}}
        )
    return out


def findings(path: Path) -> list[tuple[Any, ...]]:
    settings = config.load({}).settings
    found = []
    for owner in build_owners(read_paths([str(path)]).spans):
        for f in detect(owner, settings, registered_detectors()):
            found.append((owner.activity.route, f.kind, f.repetitions, f.fingerprint, str(f.location)))
    return sorted(found)


def test_old_stable_and_both_names_give_the_same_findings(tmp_path: Path) -> None:
    requests = [
        stable_request("encounters/", [1, 2, 3, 4, 5, 6]),  # an N+1: one statement, other values
        stable_request("patients/", [7, 7, 8]),  # a duplicate: the same statement and values
    ]
    by_generation = {}
    for generation in ("stable", "old", "dup"):
        converted = requests if generation == "stable" else [to_generation(r, generation) for r in requests]
        by_generation[generation] = findings(write_lines(tmp_path / f"{generation}.jsonl", *converted))
    kinds = {(route, kind) for route, kind, *_ in by_generation["stable"]}
    assert {("encounters/", "n_plus_one"), ("patients/", "duplicate_query")} <= kinds, kinds
    assert all(location == "hms/views.py:42 in encounters" for *_, location in by_generation["stable"])
    assert by_generation["old"] == by_generation["stable"] == by_generation["dup"]


def test_without_parameters_duplicates_cannot_be_told_in_either_generation(tmp_path: Path) -> None:
    """The negative: the same spans without any parameter attribute (not opted in) have no
    duplicate finding whatever the names; the N+1 stays."""
    request_ = stable_request("patients/", [7, 7, 7, 7, 7, 7])
    stripped = to_generation(request_, "stable")
    for resource in stripped["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for s in scope["spans"]:
                s["attributes"] = [
                    a
                    for a in s["attributes"]
                    if not a["key"].startswith(("db.query.parameter.", "db.statement.parameters"))
                ]
    kinds = {kind for _, kind, *_ in findings(write_lines(tmp_path / "none.jsonl", stripped))}
    assert "duplicate_query" not in kinds and "n_plus_one" in kinds


@pytest.mark.parametrize(
    ("value", "database", "http"),
    [
        (None, Mode.OLD, Mode.OLD),  # contrib's reading of an unset variable (the agent sets it)
        ("database,http", Mode.STABLE, Mode.STABLE),
        ("database/dup,http/dup", Mode.DUP, Mode.DUP),
        ("database,database/dup", Mode.DUP, Mode.OLD),  # /dup wins, as in contrib
        ("old", Mode.OLD, Mode.OLD),
        (" http ,gen_ai_latest_experimental", Mode.OLD, Mode.STABLE),
    ],
)
def test_mode(value: str | None, database: Mode, http: Mode) -> None:
    assert (mode(value, "database"), mode(value, "http")) == (database, http)


def test_stable_value_prefers_the_stable_name() -> None:
    assert stable_value({"db.system": "a", "db.system.name": "b"}, "db.system.name") == "b"
    assert stable_value({"db.system": "a"}, "db.system.name") == "a"
    assert stable_value({"db.redis.database_index": 3}, "db.namespace") == 3
    assert stable_value({}, "db.system.name") is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("example.org:8000", ("example.org", 8000)),
        ("127.0.0.1:54321", ("127.0.0.1", 54321)),
        ("[::1]:8000", ("::1", 8000)),
        ("example.org", ("example.org", None)),
        ("::1", ("::1", None)),
        ("example.org:http", ("example.org:http", None)),
        ("[::1]", ("::1", None)),
    ],
)
def test_split_host_port(address: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(address) == expected
