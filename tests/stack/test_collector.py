"""collector-config/otelcol.yaml (and the two-tier configs, for what holds for every collector):
every component defined and used, pipeline shape, sampling, redaction (run on sample statements),
and only names docs/attributes.md or the semantic conventions list."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .ottl import Span, Transform
from .stackfiles import (
    attribute_doc,
    gateway,
    otelcol,
    sampler,
    semconv_deprecated,
    semconv_stable,
    spanmetrics_connector,
    spanmetrics_dimensions,
)

KINDS = ("receivers", "processors", "exporters", "connectors")
# connector type -> (signal it consumes as an exporter, signal it produces as a receiver)
CONNECTOR_SIGNALS = {
    "spanmetrics": ("traces", "metrics"),
    "span_metrics": ("traces", "metrics"),
    "forward": (None, None),
}
CONFIGS = {"otelcol.yaml": otelcol, "two-tier/gateway.yaml": gateway, "two-tier/sampler.yaml": sampler}


@pytest.fixture(params=list(CONFIGS))
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return CONFIGS[request.param]()


def ctype(component_id: str) -> str:
    return component_id.split("/")[0]


def signal(pipeline_id: str) -> str:
    return pipeline_id.split("/")[0]


def pipelines(config: dict[str, Any] | None = None) -> dict[str, dict[str, list[str]]]:
    return (config or otelcol())["service"]["pipelines"]


def test_every_pipeline_component_is_defined(config: dict[str, Any]) -> None:
    for pid, pipeline in pipelines(config).items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                defined = set(config.get(kind) or {})
                if kind != "processors":
                    defined |= set(config.get("connectors") or {})
                assert component in defined, f"{pid}: {kind[:-1]} {component} is not defined"
    for extension in config["service"].get("extensions") or []:
        assert extension in (config.get("extensions") or {})


def test_every_defined_component_is_used(config: dict[str, Any]) -> None:
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for pipeline in pipelines(config).values():
        for kind in ("receivers", "processors", "exporters"):
            used[kind] |= set(pipeline.get(kind) or [])
    for kind in ("receivers", "processors", "exporters"):
        defined = set(config.get(kind) or {})
        assert defined <= used[kind], f"{kind} defined but unused: {defined - used[kind]}"
    assert set(config.get("extensions") or {}) == set(config["service"].get("extensions") or [])


def test_every_connector_is_an_exporter_in_one_pipeline_and_a_receiver_in_another(
    config: dict[str, Any],
) -> None:
    for connector in config.get("connectors") or {}:
        as_exporter = [
            p for p, spec in pipelines(config).items() if connector in (spec.get("exporters") or [])
        ]
        as_receiver = [
            p for p, spec in pipelines(config).items() if connector in (spec.get("receivers") or [])
        ]
        assert as_exporter and as_receiver, (
            f"{connector}: exporter in {as_exporter}, receiver in {as_receiver}"
        )
        assert not set(as_exporter) & set(as_receiver), f"{connector} loops within a pipeline"
        consumes, produces = CONNECTOR_SIGNALS[ctype(connector)]
        for p in as_exporter:
            assert signal(p) == (consumes or signal(p))
        for p in as_receiver:
            assert signal(p) == (produces or signal(as_exporter[0])), f"{connector} feeds {p}"


def check_span_metrics_before_tail_sampling(config: dict[str, Any]) -> None:
    """OTLP in, span metrics from every span, tail sampling only on the way to Jaeger and Tempo."""
    p = pipelines(config)
    (metrics_connector,) = [c for c in config["connectors"] if ctype(c) in ("spanmetrics", "span_metrics")]
    (forward,) = [c for c in config["connectors"] if ctype(c) == "forward"]
    ingress = [
        pid for pid, spec in p.items() if "otlp" in (spec.get("receivers") or []) and signal(pid) == "traces"
    ]
    assert len(ingress) == 1, "one traces pipeline receives OTLP"
    entry = p[ingress[0]]
    assert "tail_sampling" not in entry["processors"]
    assert {metrics_connector, forward} <= set(entry["exporters"])
    sampled = [pid for pid, spec in p.items() if forward in (spec.get("receivers") or [])]
    assert len(sampled) == 1
    assert "tail_sampling" in p[sampled[0]]["processors"]
    assert metrics_connector not in p[sampled[0]]["exporters"]
    exporters = {ctype(e) + ":" + config["exporters"][e]["endpoint"] for e in p[sampled[0]]["exporters"]}
    assert exporters == {"otlp_grpc:jaeger:4317", "otlp_grpc:tempo:4317"}
    metrics = [pid for pid, spec in p.items() if metrics_connector in (spec.get("receivers") or [])]
    assert len(metrics) == 1 and signal(metrics[0]) == "metrics"
    assert [ctype(e) for e in p[metrics[0]]["exporters"]] == ["prometheus"]


def test_span_metrics_are_computed_before_tail_sampling() -> None:
    check_span_metrics_before_tail_sampling(otelcol())
    metrics = pipelines()["metrics"]
    assert "otlp" in metrics["receivers"], "the agent's own hms.* metrics reach Prometheus too"


def test_every_transform_processor_runs_in_one_ottl_context(config: dict[str, Any]) -> None:
    """The collector infers the context of a flat statement list from its paths; with span and
    span-event statements mixed, span statements could run once per event (and not at all on a
    span without events). One context per processor leaves nothing to infer wrongly."""
    for name, processor in config["processors"].items():
        if ctype(name) != "transform":
            continue
        for signal_key in ("trace_statements", "metric_statements", "log_statements"):
            statements = processor.get(signal_key) or []
            assert all(isinstance(s, str) for s in statements), f"{name}: flat statement lists only"
            contexts = {
                c
                for s in statements
                for c in re.findall(r"\b(resource|scope|span|spanevent|metric|datapoint|log)\.", s)
            }
            lower = contexts - {"resource", "scope"}  # readable from any lower context
            assert len(lower) <= 1, f"{name}: statements in several contexts {sorted(lower)}"


def test_memory_limiter_first_and_batch_in_every_pipeline(config: dict[str, Any]) -> None:
    for pid, spec in pipelines(config).items():
        processors = spec.get("processors") or []
        assert "batch" in processors, pid
        if "otlp" in (spec.get("receivers") or []):
            assert processors[0] == "memory_limiter", f"{pid}: memory_limiter must come first"
        assert processors.index("batch") > max(
            (processors.index(p) for p in processors if ctype(p) in ("transform", "tail_sampling")),
            default=-1,
        ), f"{pid}: batch after the processors that look at single spans or traces"


def test_receivers_listen_on_every_interface(config: dict[str, Any]) -> None:
    for protocol, spec in config["receivers"]["otlp"]["protocols"].items():
        assert spec["endpoint"].startswith("0.0.0.0:"), protocol


def policies() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in otelcol()["processors"]["tail_sampling"]["policies"]}


def test_tail_sampling_keeps_findings_errors_slow_traces_and_a_share_of_the_rest() -> None:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for policy in policies().values():
        by_type.setdefault(policy["type"], []).append(policy[policy["type"]])
    assert {"key": "hms.n_plus_one", "value": True} in by_type["boolean_attribute"]
    (numeric,) = by_type["numeric_attribute"]
    assert numeric["key"] == "hms.findings.count" and numeric["min_value"] == 1 and "max_value" not in numeric
    assert by_type["status_code"] == [{"status_codes": ["ERROR"]}]
    (latency,) = by_type["latency"]
    assert 0 < latency["threshold_ms"] <= 5000
    (share,) = by_type["probabilistic"]
    assert 0 < share["sampling_percentage"] < 100
    assert not {"and", "drop", "composite"} & set(by_type), "policies are OR-ed: keep it that way"
    for policy in policies().values():
        assert not (policy.get(policy["type"]) or {}).get("invert_match"), "invert_match is deprecated"


def test_attribute_names_in_the_collector_config_are_documented() -> None:
    """hms.* (and any other name of the agent's) in docs/attributes.md; the rest are semantic-
    convention names, stable or deprecated (the old generation transform/semconv reads)."""
    doc = attribute_doc()
    names = set(spanmetrics_dimensions())
    for policy in policies().values():
        key = (policy.get(policy["type"]) or {}).get("key")
        if key:
            names.add(key)
    for processor in ("transform/redact", "transform/semconv", "transform/semconv_events"):
        for statement in otelcol()["processors"][processor]["trace_statements"]:
            names |= set(re.findall(r'(?:span|spanevent)\.attributes\["([^"]+)"\]', statement))
            names |= set(re.findall(r'delete_key\(span\.attributes,\s*"([^"]+)"\)', statement))
    assert names, "no attribute names found"
    semconv = semconv_stable() | set(semconv_deprecated())
    unknown = {n for n in names - doc.span_names if n.startswith("hms.") or n not in semconv}
    assert not unknown, f"neither in docs/attributes.md nor semantic conventions: {sorted(unknown)}"
    types = {**{a: "" for a in doc.metric_attributes}, **doc.span_types}
    assert types["hms.n_plus_one"] == "bool" and types["hms.findings.count"] == "int"


def test_spanmetrics_dimensions_are_low_cardinality() -> None:
    doc = attribute_doc()
    high = {
        "hms.hints",
        "hms.db.fingerprint",
        "db.statement",
        "db.query.text",
        "hms.cache.key",
        "code.file.path",
        "code.line.number",
        "code.function.name",
        "hms.cache.key_pattern",
    }
    bounded_numbers = {"http.response.status_code"}  # a few dozen codes at most
    for dim in spanmetrics_dimensions():
        assert dim not in high
        if dim not in bounded_numbers:
            kind = doc.span_types.get(dim, "string")
            assert kind in ("string", "bool"), f"{dim}: numbers make a series each"
        if not dim.startswith("hms."):
            assert dim in semconv_stable(), f"{dim}: the stable names transform/semconv fills in"
    assert "http.route" in spanmetrics_dimensions()


# --- redaction, executed: the OTTL statements run (tests/stack/ottl.py) on sample statements ------


def redact(attribute: str, value: str) -> str:
    span = Span("SELECT", "SPAN_KIND_CLIENT", {attribute: value})
    Transform.from_config(otelcol()["processors"]["transform/redact"]).apply(span)
    return str(span.attributes[attribute])


@pytest.mark.parametrize("attribute", ["db.statement", "db.query.text"])
@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (
            "SELECT * FROM hms_patient WHERE mrn = 'MRN-0042' AND id = 42",
            "SELECT * FROM hms_patient WHERE mrn = ? AND id = ?",
        ),
        (
            "SELECT 1 FROM t2 WHERE name = 'O''Brien' AND x IN (1, 2.5, -3) LIMIT 21",
            "SELECT ? FROM t2 WHERE name = ? AND x IN (?, ?, -?) LIMIT ?",
        ),
        (
            'SELECT "hms_encounter"."id" FROM "hms_encounter" WHERE "hms_encounter"."patient_id" = 7',
            'SELECT "hms_encounter"."id" FROM "hms_encounter" WHERE "hms_encounter"."patient_id" = ?',
        ),
        ("SELECT a FROM b WHERE c = $1 AND d = %s", "SELECT a FROM b WHERE c = $1 AND d = %s"),
        ("SELECT * FROM hms_patient WHERE id = ? LIMIT ?", "SELECT * FROM hms_patient WHERE id = ? LIMIT ?"),
    ],
)
def test_redaction_masks_literals_and_leaves_masked_statements_alone(
    attribute: str, raw: str, masked: str
) -> None:
    assert redact(attribute, raw) == masked


def test_redaction_drops_raw_cache_keys_and_query_parameters_of_both_generations() -> None:
    attributes = {
        "hms.cache.key": "patient:MRN-0042:summary",
        "hms.cache.key_pattern": "patient:{id}:summary",
        "db.statement.parameters": "('MRN-0042',)",
        "db.query.parameter.0": "MRN-0042",
        "db.query.parameter.mrn": "MRN-0042",
        "db.query.text": "SELECT 1",
        "db.query.parameters_note": "kept: not a parameter",
    }
    span = Span("GET", "SPAN_KIND_CLIENT", dict(attributes))
    Transform.from_config(otelcol()["processors"]["transform/redact"]).apply(span)
    assert span.attributes == {
        "hms.cache.key_pattern": "patient:{id}:summary",
        "db.query.text": "SELECT ?",
        "db.query.parameters_note": "kept: not a parameter",
    }
    assert otelcol()["processors"]["transform/redact"]["error_mode"] == "ignore"


def test_redaction_runs_before_anything_copies_or_counts_a_statement() -> None:
    processors = pipelines()["traces/in"]["processors"]
    assert processors.index("transform/redact") == 1  # right after memory_limiter
    assert processors.index("transform/redact") < processors.index("transform/semconv")


def test_series_of_several_worker_processes_do_not_collide() -> None:
    """Two gunicorn workers export cumulative counters with the same service.name: Prometheus
    needs an instance label per process, and the span metrics one series per service."""
    metrics = pipelines()["metrics"]
    transforms = [p for p in metrics["processors"] if ctype(p) == "transform"]
    (statement,) = [s for p in transforms for s in otelcol()["processors"][p]["metric_statements"]]
    assert statement.startswith('set(resource.attributes["service.instance.id"],')
    assert 'resource.attributes["process.pid"]' in statement
    assert 'where resource.attributes["service.instance.id"] == nil' in statement
    assert metrics["processors"].index(transforms[0]) < metrics["processors"].index("batch")
    assert spanmetrics_connector()["resource_metrics_key_attributes"] == ["service.name"]
