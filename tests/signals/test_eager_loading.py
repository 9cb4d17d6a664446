"""Unused eager loading, aggregated over evaluations: never per request, never once read."""

from __future__ import annotations

from hms_otel_agent.signals.eager_loading import (
    PREFETCH_RELATED,
    SELECT_RELATED,
    EagerOutcome,
    UnusedEagerAggregator,
)
from hms_otel_agent.signals.records import CodeLocation

VIEW = CodeLocation("hms/views.py", 50, "upcoming")
OTHER = CodeLocation("hms/views.py", 90, "schedule")


def outcome(
    used: set[str], relations: tuple[tuple[str, str], ...] | None = None, location: CodeLocation = VIEW
) -> EagerOutcome:
    relations = relations or (("patient", SELECT_RELATED), ("practitioner", SELECT_RELATED))
    return EagerOutcome("hms.Appointment", location, relations, frozenset(used))


def test_a_relation_never_read_is_reported_once_after_enough_evaluations() -> None:
    aggregator = UnusedEagerAggregator()
    assert [aggregator.add(outcome({"patient"}), 3) for _ in range(2)] == [[], []]
    [finding] = aggregator.add(outcome({"patient"}), 3)
    assert finding.kind == "unused_eager_load"
    assert finding.relation == "hms.Appointment.practitioner"
    assert finding.fix == "drop 'practitioner' from .select_related(...)"
    assert finding.repetitions == 3 and finding.location == VIEW
    assert finding.hint == (
        "Appointment queryset at hms/views.py:50 in upcoming: .select_related('practitioner') loaded in "
        "3 evaluations and never read — drop 'practitioner' from .select_related(...)"
    )
    assert aggregator.add(outcome({"patient"}), 3) == []  # once per site


def test_a_relation_read_once_is_never_reported() -> None:
    aggregator = UnusedEagerAggregator()
    aggregator.add(outcome({"patient", "practitioner"}), 2)
    for _ in range(10):
        assert aggregator.add(outcome({"patient"}), 2) == []


def test_sites_are_counted_apart() -> None:
    aggregator = UnusedEagerAggregator()
    aggregator.add(outcome({"patient"}), 2)
    assert aggregator.add(outcome({"patient"}, location=OTHER), 2) == []
    assert len(aggregator.add(outcome({"patient"}), 2)) == 1


def test_a_nested_path_whose_parent_is_read_keeps_the_parent() -> None:
    relations = (("encounters", PREFETCH_RELATED), ("encounters__practitioner", PREFETCH_RELATED))
    aggregator = UnusedEagerAggregator()
    aggregator.add(outcome({"encounters"}, relations), 2)
    [finding] = aggregator.add(outcome({"encounters"}, relations), 2)
    assert finding.fix == ".prefetch_related('encounters') instead of 'encounters__practitioner'"


def test_an_unread_parent_covers_its_children() -> None:
    relations = (("patient", SELECT_RELATED), ("patient__insurance", SELECT_RELATED))
    aggregator = UnusedEagerAggregator()
    aggregator.add(outcome(set(), relations), 2)
    [finding] = aggregator.add(outcome(set(), relations), 2)
    assert finding.relation == "hms.Appointment.patient"
    assert finding.fix == "drop 'patient' from .select_related(...)"


def test_sites_are_bounded() -> None:
    aggregator = UnusedEagerAggregator(max_sites=2)
    aggregator.add(outcome(set()), 100)
    aggregator.add(outcome(set(), location=OTHER), 100)
    assert len(aggregator.sites) == 2
