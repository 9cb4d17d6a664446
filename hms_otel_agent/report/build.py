"""From spans to a `Report`: recorded findings (`hms-otel report`) or re-detected ones (`analyze`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hms_otel_agent.config import Settings
from hms_otel_agent.report.model import ANALYZED, RECORDED, Aggregator, Report
from hms_otel_agent.report.otlp import SpanData
from hms_otel_agent.report.spans import Owner, build_owners
from hms_otel_agent.signals import cache_signals
from hms_otel_agent.signals.http_privacy import HttpPrivacy
from hms_otel_agent.signals.records import Finding
from hms_otel_agent.signals.registry import Detector
from hms_otel_agent.signals.vocabulary import RUN_ID_ATTRIBUTE


def registered_detectors() -> list[Detector]:
    """The detectors the live agent runs (signals/registry.py), read when called."""
    from hms_otel_agent.signals import registry

    return list(registry.DETECTORS)


def detect(owner: Owner, settings: Settings, detectors: Sequence[Detector]) -> list[Finding]:
    from hms_otel_agent.signals.registry import consolidate

    if owner.aggregate:
        return owner.recorded  # decided live over many requests: nothing to re-detect
    activity = owner.activity
    if not (activity.db_calls or activity.cache_calls or activity.connects or activity.http_calls):
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
    # The URL rules of these settings (HMS_OTEL_SAFE_*, HMS_OTEL_REDACT_*, HMS_OTEL_CAPTURE_*), as
    # the live agent applies them: spans of other agents may carry paths and URLs raw.
    owners = build_owners(spans, privacy=HttpPrivacy.from_settings(settings))
    if analyze:  # cache fills are evidence across the whole input, as across a live process
        cache_signals.reset_evidence()
        for owner in owners:
            cache_signals.evidence.observe(owner.activity.cache_calls)
    for owner in owners:
        findings = detect(owner, settings, chosen) if analyze else owner.recorded
        aggregator.add(owner, findings)
    if analyze:
        note = offline_limits(owners)
        if note:
            aggregator.notes.append(note)
    return aggregator.report()


def offline_limits(owners: Sequence[Owner]) -> str:
    """One note naming the kinds of finding `analyze` cannot detect from these spans, and why
    ("" when it can detect them all). The live agent decides with data that never leaves the
    process unless opted in (statement parameters, raw cache keys) or over many requests."""
    db = [call for owner in owners for call in owner.activity.db_calls]
    cache = [call for owner in owners for call in owner.activity.cache_calls]
    missing = []
    if db and all(call.params_hash is None for call in db):
        missing.append(
            "duplicate queries (the same statement with the same parameters: parameters are "
            "exported only with HMS_OTEL_CAPTURE_SQL_PARAMETERS=true)"
        )
    if any(call.misses for call in cache) and all(call.key_hash is None for call in cache if call.misses):
        missing.append(
            "cache repeated misses (one key missed twice: keys are exported only with "
            "HMS_OTEL_CAPTURE_CACHE_KEYS=true; misses without fill are then judged by key pattern)"
        )
    if (
        db
        and any(call.orm is not None and call.orm.model for call in db)
        and not any(o.aggregate for o in owners)
    ):
        missing.append(
            "unused eager loads (decided by the live agent over many requests, from attribute reads "
            "no span records; with HMS_OTEL_UNUSED_EAGER_LOADS=true it exports what it found)"
        )
    if db and all(call.rows < 0 for call in db):
        missing.append("unbounded and wide results (no db.response.returned_rows on the DB spans)")
    if (
        db
        and not any(owner.activity.connects for owner in owners)
        and not any(call.orm is not None for call in db)
    ):
        missing.append("connection churn (needs the agent's hms.db.connect events)")
    http = [call for owner in owners for call in owner.activity.http_calls]
    if http and all(call.timeout is None for call in http):
        missing.append(
            "HTTP calls without a timeout (only the agent's client spans say it: hms.http.timeout)"
        )
    if not missing:
        return ""
    return "not detectable offline from this input: " + "; ".join(missing)
