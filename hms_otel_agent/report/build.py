"""From spans to a `Report`: recorded findings (`hms-otel report`) or re-detected ones (`analyze`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hms_otel_agent.config import Settings
from hms_otel_agent.report.at_exit import RUN_ID_ATTRIBUTE
from hms_otel_agent.report.model import ANALYZED, RECORDED, Aggregator, Report
from hms_otel_agent.report.otlp import SpanData
from hms_otel_agent.report.spans import Owner, build_owners
from hms_otel_agent.signals.activity import Finding
from hms_otel_agent.signals.registry import Detector


def registered_detectors() -> list[Detector]:
    """The detectors the live agent runs (signals/registry.py), read when called."""
    from hms_otel_agent.signals import registry

    return list(registry.DETECTORS)


def detect(owner: Owner, settings: Settings, detectors: Sequence[Detector]) -> list[Finding]:
    from hms_otel_agent.signals.registry import consolidate

    if owner.aggregate:
        return owner.recorded  # decided live over many requests: nothing to re-detect
    activity = owner.activity
    if not (activity.db_calls or activity.cache_calls or activity.connects):
        return []
    findings: list[Finding] = []
    for detector in detectors:
        findings.extend(detector(activity, settings))
    return consolidate(findings)


def filter_run(spans: Iterable[SpanData], run_id: str | None) -> list[SpanData]:
    if not run_id:
        return list(spans)
    return [s for s in spans if str(s.resource.get(RUN_ID_ATTRIBUTE, "")) == run_id]


def latest_run_id(spans: Iterable[SpanData]) -> str:
    """The run id of the most recent span that has one ('' if none has)."""
    latest, found = -1, ""
    for span in spans:
        run_id = span.resource.get(RUN_ID_ATTRIBUTE)
        if run_id and span.end_ns > latest:
            latest, found = span.end_ns, str(run_id)
    return found


def build_report(
    spans: Sequence[SpanData],
    settings: Settings,
    *,
    analyze: bool,
    inputs: Sequence[str] = (),
    detectors: Sequence[Detector] | None = None,
) -> Report:
    aggregator = Aggregator(ANALYZED if analyze else RECORDED, inputs, settings)
    aggregator.add_spans(len(spans))
    chosen = (registered_detectors() if detectors is None else list(detectors)) if analyze else []
    owners = build_owners(spans)
    for owner in owners:
        findings = detect(owner, settings, chosen) if analyze else owner.recorded
        aggregator.add(owner, findings)
    calls = [call for owner in owners for call in owner.activity.db_calls]
    if analyze and calls and all(call.params_hash is None for call in calls):
        aggregator.notes.append(
            "duplicate queries need the statement parameters, which are exported only with "
            "HMS_OTEL_CAPTURE_SQL_PARAMETERS=true: not checked"
        )
    return aggregator.report()
