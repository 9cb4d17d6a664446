"""The owner's time split: each instant counted once, for the innermost kind of work."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hms_otel_agent.signals import time_split
from hms_otel_agent.signals.time_split import CACHE, DB, HTTP, TEMPLATE, Intervals, split

MS = 1_000_000


def intervals(*spans: tuple[int, int, int]) -> Intervals:
    found = Intervals()
    for begin, end, kind in spans:
        found.add(begin * MS, end * MS, kind)
    return found


def test_queries_inside_a_template_are_database_time_not_template_time() -> None:
    # a 100 ms request: template 20-80 with two queries in it (30-40, 50-55), a query at 5-10
    parts = split(0, 100 * MS, intervals((20, 80, TEMPLATE), (30, 40, DB), (50, 55, DB), (5, 10, DB)))
    assert parts == {"db_ms": 20.0, "cache_ms": 0.0, "http_ms": 0.0, "template_ms": 45.0, "app_ms": 35.0}


def test_concurrent_http_calls_count_their_common_time_once() -> None:
    parts = split(0, 100 * MS, intervals((10, 60, HTTP), (10, 60, HTTP), (20, 70, HTTP)))
    assert parts["http_ms"] == 60.0 and parts["app_ms"] == 40.0


def test_sql_under_a_cache_call_is_cache_time() -> None:
    parts = split(0, 10 * MS, intervals((2, 6, CACHE), (3, 5, DB)))
    assert (parts["cache_ms"], parts["db_ms"], parts["app_ms"]) == (4.0, 0.0, 6.0)


def test_children_outside_the_owner_are_clipped() -> None:
    parts = split(10 * MS, 20 * MS, intervals((5, 15, DB), (18, 30, HTTP)))
    assert parts == {"db_ms": 5.0, "cache_ms": 0.0, "http_ms": 2.0, "template_ms": 0.0, "app_ms": 3.0}


def test_no_children_is_all_app_time() -> None:
    assert split(0, 7 * MS, None) == {
        "db_ms": 0.0,
        "cache_ms": 0.0,
        "http_ms": 0.0,
        "template_ms": 0.0,
        "app_ms": 7.0,
    }


def test_beyond_the_cap_durations_are_added_and_capped() -> None:
    found = Intervals()
    count = time_split.MAX_INTERVALS + 10
    for index in range(count):
        found.add(index * 10 * MS, (index * 10 + 5) * MS, DB)
    assert len(found.spans) == time_split.MAX_INTERVALS
    assert split(0, count * 10 * MS, found)["db_ms"] == count * 5
    # more overflow than the owner lasted: capped, app time never negative
    found.add(0, count * 100 * MS, HTTP)
    parts = split(0, count * 10 * MS, found)
    assert parts["http_ms"] == count * 5 and parts["app_ms"] == 0.0


spans = st.lists(
    st.tuples(st.integers(-50, 250), st.integers(0, 120), st.sampled_from((CACHE, DB, HTTP, TEMPLATE))),
    max_size=40,
)


@given(spans, st.integers(1, 200))
def test_parts_add_up_to_the_owner_and_are_never_negative(
    raw: list[tuple[int, int, int]], total: int
) -> None:
    found = Intervals()
    for begin, length, kind in raw:
        found.add(begin * MS, (begin + length) * MS, kind)
    parts = split(0, total * MS, found)
    assert all(value >= 0 for value in parts.values())
    assert abs(sum(parts.values()) - total) < 1e-6
