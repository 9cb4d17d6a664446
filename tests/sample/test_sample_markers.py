"""The ``# lazy:`` / ``# cache-read:`` markers sit on exactly the lines that run the lazy loads.

Checked for real: every query (through a Django execute wrapper) and every cache read (through a
profile hook on the cache backend's ``get``) is attributed to the views.py line whose frame made it.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hms_otel_agent.sample.hms import markers as markers_mod

VIEWS_FILE = str(markers_mod.VIEWS_PATH)  # the views module itself needs Django set up
N = 6

# naive view -> URL that runs it (patients 1..N; N ids for the lookup)
NAIVE_URLS = {
    "patient_list_naive": f"/patients/?limit={N}",
    "encounter_list_naive": f"/encounters/?limit={N}",
    "schedule_naive": f"/appointments/schedule/?limit={N}",
    "patient_records_naive": f"/patients/records/?limit={N}",
    "note_list_naive": f"/notes/?limit={N}",
    "birthdays_naive": f"/patients/birthdays/?limit={N}",
    "patient_lookup_naive": f"/patients/lookup/?ids={','.join(map(str, range(1, N + 1)))}",
    "facility_list_naive": "/facilities/",
    "raw_encounters_naive": f"/reports/raw-encounters/?limit={N}",
}
CACHE_URLS = {
    "cached_patients_naive": f"/patients/cached/?limit={N}",
    "flaky_summary": "/patients/1/flaky-summary/",
}
LAZY_TARGET = re.compile(r"^((get|count) )?hms\.[A-Z]\w*(\.\w+)?$|^raw hms_\w+$")
EXPECTED_LAZY = {
    "patient_list_naive": {"hms.Patient.insurance", "hms.Patient.emergency_contacts"},
    "encounter_list_naive": {"hms.Encounter.patient", "hms.Encounter.facility", "hms.Patient.insurance"},
    "schedule_naive": {"hms.Practitioner.appointments", "hms.Practitioner.departments"},
    "patient_records_naive": {"hms.Patient.medical_record", "hms.Patient.notes"},
    "note_list_naive": {"hms.Note.subject"},
    "birthdays_naive": {"hms.Patient.date_of_birth"},
    "patient_lookup_naive": {"get hms.Patient"},
    "facility_list_naive": {"count hms.Facility.encounters"},
    "raw_encounters_naive": {"raw hms_encounter"},
}


def _caller_in_views() -> tuple[str, int] | None:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == VIEWS_FILE:
            return frame.f_code.co_name, frame.f_lineno
        frame = frame.f_back
    return None


@contextmanager
def query_lines() -> Iterator[Counter[tuple[str, int]]]:
    """Count queries per (view function, line) of views.py."""
    from django.db import connection

    seen: Counter[tuple[str, int]] = Counter()

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        where = _caller_in_views()
        if where is not None:
            seen[where] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield seen


@contextmanager
def cache_read_lines() -> Iterator[Counter[tuple[str, int]]]:
    """Count cache ``get`` calls per (function, line) of views.py."""
    from django.core.cache import caches

    get_code = type(caches["default"]).get.__code__
    seen: Counter[tuple[str, int]] = Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is get_code:
            # The first views.py frame up the stack: instrumentation may wrap the cache call.
            caller = frame.f_back
            for _ in range(10):
                if caller is None or caller.f_code.co_filename == VIEWS_FILE:
                    break
                caller = caller.f_back
            if caller is not None:
                seen[caller.f_code.co_name, caller.f_lineno] += 1

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def test_markers_are_well_formed_and_only_in_naive_views(sample_app: None) -> None:
    from hms_otel_agent.sample.hms import views

    assert views.__file__ == VIEWS_FILE
    found = markers_mod.find_markers()
    lazy = [m for m in found if m.kind == "lazy"]
    assert {view: {m.target for m in lazy if m.view == view} for view in EXPECTED_LAZY} == EXPECTED_LAZY
    assert {m.view for m in lazy} == set(EXPECTED_LAZY)
    for m in lazy:
        assert LAZY_TARGET.match(m.target), m
        assert m.view.endswith("_naive") and hasattr(views, m.view.replace("_naive", "_optimized")), m
    reads = {(m.view, m.target) for m in found if m.kind == "cache-read"}
    assert reads == {
        ("cached_patients_naive", "patient:{id}:summary"),
        ("flaky_summary", "patient:{id}:profile"),
    }
    source = Path(VIEWS_FILE).read_text(encoding="utf-8").splitlines()
    for m in found:
        assert source[m.lineno - 1].rstrip().endswith(f"# {m.kind}: {m.target}")
    in_encounters = markers_mod.marker_line("encounter_list_naive", "hms.Patient.insurance")
    assert in_encounters != markers_mod.marker_line("patient_list_naive", "hms.Patient.insurance")
    with pytest.raises(LookupError):
        markers_mod.marker_line("patient_list_optimized", "hms.Patient.insurance")


@pytest.mark.parametrize("view", sorted(NAIVE_URLS))
def test_lazy_markers_sit_on_the_lines_that_run_the_queries(hms_client: Any, view: str) -> None:
    url = NAIVE_URLS[view]
    hms_client.get(url)  # warm the content-type cache
    with query_lines() as seen:
        assert hms_client.get(url).status_code == 200
    marker_lines = {m.lineno for m in markers_mod.markers_of(view) if m.kind == "lazy"}
    lines = {line: count for (func, line), count in seen.items() if func == view}
    assert {func for func, _ in seen} <= {view}, seen
    # every marked line ran a query per row; every line that ran more than one query is marked
    for line in marker_lines:
        assert lines.get(line, 0) >= 2, (view, line, lines)
    assert {line for line, count in lines.items() if count > 1} == marker_lines
    # the rest is the one page query (the `for` line), if any
    assert sum(count for line, count in lines.items() if line not in marker_lines) <= 1


@pytest.mark.parametrize("view", sorted(NAIVE_URLS))
def test_optimized_twin_query_count_does_not_grow_with_rows(hms_client: Any, view: str) -> None:
    twin = view.replace("_naive", "_optimized")
    totals = []
    for rows in (2, N):
        url = NAIVE_URLS[view].replace(f"limit={N}", f"limit={rows}")
        if view == "patient_lookup_naive":
            url = f"/patients/lookup/?ids={','.join(map(str, range(1, rows + 1)))}"
        base, _, query = url.partition("?")
        with query_lines() as seen:
            assert hms_client.get(f"{base}optimized/?{query}").status_code == 200
        assert {func for func, _ in seen} == {twin}
        assert not {line for _, line in seen} & {m.lineno for m in markers_mod.find_markers()}
        totals.append(sum(seen.values()))
    assert totals[0] == totals[1], totals


@pytest.mark.parametrize("view", sorted(CACHE_URLS))
def test_cache_read_markers_sit_on_the_lines_that_read(hms_client: Any, hms_cache: Any, view: str) -> None:
    with cache_read_lines() as seen:
        assert hms_client.get(CACHE_URLS[view]).status_code == 200
    marker_lines = {m.lineno for m in markers_mod.markers_of(view) if m.kind == "cache-read"}
    assert {line for (func, line) in seen if func == view} == marker_lines
    assert all(count >= 2 for count in seen.values()), seen
