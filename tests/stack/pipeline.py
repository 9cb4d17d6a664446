"""The collector configs of collector-config/, run on spans in Python: the transform processors
(through tests/stack/ottl.py), the span metrics connector's series labels and the tail-sampling
policies. Enough to check what a collector built from these configs would do with a payload,
without a collector (none can be installed here, see docs/stack.md).

Only the parts the tests need, as the components document them: the span metrics connector keys a
series by service name, span name, span kind, status code and each configured dimension (from the
span's attributes, else the resource's, else the dimension's default, else left out) plus
``collector.instance.id``; the tail-sampling policies used here (``boolean_attribute``,
``numeric_attribute``, ``status_code``, ``latency``) match a trace when any of its spans (or their
resources) matches, the latency one on the trace's first start to last end.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .ottl import Event, ParseError, Span, Transform
from .stackfiles import label

NO_OP_PROCESSORS = {"memory_limiter", "batch"}


def ctype(component_id: str) -> str:
    return component_id.split("/")[0]


def span_from_received(received: Any) -> Span:
    """A copy of a harness.otlp_receiver.ReceivedSpan the interpreter can change."""
    return Span(
        name=received.name,
        kind=received.kind,
        attributes=copy.deepcopy(dict(received.attributes)),
        events=[Event(e.name, copy.deepcopy(dict(e.attributes))) for e in received.events],
        resource=copy.deepcopy(dict(received.resource)),
        status_code=received.status_code,
        trace_id=received.trace_id,
        scope=received.scope_name,
        start_ns=received.start_time_unix_nano,
        end_ns=received.end_time_unix_nano,
    )


def transforms(config: dict[str, Any], pipeline_id: str) -> list[Transform]:
    """The transform processors of one traces pipeline, in order, up to tail sampling."""
    found = []
    for processor in config["service"]["pipelines"][pipeline_id].get("processors") or []:
        kind = ctype(processor)
        if kind == "transform":
            found.append(Transform.from_config(config["processors"][processor]))
        elif kind == "tail_sampling":
            break
        elif kind not in NO_OP_PROCESSORS:
            raise ParseError(f"{pipeline_id}: no model of processor {processor}")
    return found


def process(config: dict[str, Any], pipeline_id: str, spans: Iterable[Span]) -> list[Span]:
    steps = transforms(config, pipeline_id)
    out = []
    for span in spans:
        span = copy.deepcopy(span)
        for step in steps:
            step.apply(span)
        out.append(span)
    return out


# --- span metrics ---------------------------------------------------------------------------------


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def spanmetrics_labels(
    connector: dict[str, Any], span: Span, instance: str = "collector-1"
) -> dict[str, str]:
    """The Prometheus labels of the span-metrics series a span counts in."""
    labels = {
        "service_name": _label_value(span.resource.get("service.name", "")),
        "span_name": span.name,
        "span_kind": span.kind,
        "status_code": span.status_code,
        "collector_instance_id": instance,
    }
    for dimension in connector.get("dimensions") or []:
        name = dimension["name"]
        if name in span.attributes:
            value = span.attributes[name]
        elif name in span.resource:
            value = span.resource[name]
        elif "default" in dimension:
            value = dimension["default"]
        else:
            continue
        labels[label(name)] = _label_value(value)
    return labels


# --- tail sampling --------------------------------------------------------------------------------


def _attribute_values(spans: list[Span], key: str) -> list[Any]:
    values = []
    for span in spans:
        if key in span.attributes:
            values.append(span.attributes[key])
        if key in span.resource:
            values.append(span.resource[key])
    return values


def matching_policies(policies: list[dict[str, Any]], trace: list[Span]) -> set[str]:
    """Names of the deterministic policies that sample this trace (probabilistic ones skipped)."""
    matched = set()
    for policy in policies:
        kind = policy["type"]
        spec = policy.get(kind) or {}
        if kind == "probabilistic":
            continue
        if kind == "boolean_attribute":
            hit = any(v is spec["value"] for v in _attribute_values(trace, spec["key"]))
        elif kind == "numeric_attribute":
            low, high = spec.get("min_value"), spec.get("max_value")
            hit = any(
                isinstance(v, int)
                and not isinstance(v, bool)
                and (low is None or v >= low)
                and (high is None or v <= high)
                for v in _attribute_values(trace, spec["key"])
            )
        elif kind == "status_code":
            wanted = {f"STATUS_CODE_{c}" for c in spec["status_codes"]}
            hit = any(s.status_code in wanted for s in trace)
        elif kind == "latency":
            duration_ms = (max(s.end_ns for s in trace) - min(s.start_ns for s in trace)) / 1e6
            hit = duration_ms >= spec["threshold_ms"]
        else:
            raise ParseError(f"no model of tail-sampling policy type {kind}")
        if hit:
            matched.add(policy["name"])
    return matched


def traces(spans: Iterable[Span]) -> dict[str, list[Span]]:
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return by_trace
