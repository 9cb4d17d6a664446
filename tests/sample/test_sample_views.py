"""Every naive endpoint and its optimized twin: same JSON, exact SQL query counts.

The seed (40 patients, --seed 1) makes the counts closed-form: patients with an odd id are
insured, encounter k belongs to patient k, ids start at 1, 4 facilities, 12 practitioners.
"""

from __future__ import annotations

from collections.abc import Callable
from math import ceil
from typing import Any

import pytest

N = 10  # ?limit=N for list endpoints


def _twin(path: str) -> str:
    base, _, query = path.partition("?")
    return base + "optimized/" + ("?" + query if query else "")


# path (naive), naive query count, optimized query count
TWINS: list[tuple[str, Callable[[int], int], int]] = [
    # 1 page + N emergency_contacts + one insurance per insured patient (odd ids: ceil(N/2))
    (f"/patients/?limit={N}", lambda n: 1 + n + ceil(n / 2), 2),
    # 1 page + N patients + N facilities + insured patients' insurance
    (f"/encounters/?limit={N}", lambda n: 1 + 2 * n + ceil(n / 2), 1),
    # 1 page + per practitioner (12 exist): filtered appointments + departments
    (f"/appointments/schedule/?limit={N}", lambda n: 1 + 2 * min(n, 12), 3),
    # 1 page + per patient: medical_record + notes
    (f"/patients/records/?limit={N}", lambda n: 1 + 2 * n, 2),
    # 1 page + one subject per note (content types cached); optimized: notes + patients + encounters
    (f"/notes/?limit={N}", lambda n: 1 + n, 3),
    # 1 page + one deferred date_of_birth load per patient
    (f"/patients/birthdays/?limit={N}", lambda n: 1 + n, 1),
    # one .get() per id (N ids, the last one missing), no page query
    (f"/patients/lookup/?ids={','.join(str(i) for i in [*range(1, N), 9999])}", lambda n: n, 1),
    # 1 page + one count per facility (4 exist)
    (f"/facilities/?limit={N}", lambda n: 1 + min(n, 4), 1),
    # 1 id query + one raw encounter query per patient; optimized: ids + ANY(%s)
    (f"/reports/raw-encounters/?limit={N}", lambda n: 1 + n, 2),
    # cache endpoints: one SQL query either way
    (f"/patients/cached/?limit={N}", lambda n: 1, 1),
    (f"/encounters/recent/?limit={N}", lambda n: 1, 1),
]


def _get_json(client: Any, path: str) -> Any:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json"
    return response.json()


@pytest.mark.parametrize(("path", "naive_count", "optimized_count"), TWINS, ids=[t[0] for t in TWINS])
def test_twins_return_identical_json_with_fewer_queries(
    hms_client: Any,
    hms_cache: Any,
    count_queries: Callable[[], Any],
    path: str,
    naive_count: Callable[[int], int],
    optimized_count: int,
) -> None:
    # Warm process-wide caches (content types) so that only the view's own queries are counted.
    _get_json(hms_client, path)
    _get_json(hms_client, _twin(path))

    with count_queries() as naive_queries:
        naive = _get_json(hms_client, path)
    with count_queries() as optimized_queries:
        optimized = _get_json(hms_client, _twin(path))

    assert naive == optimized
    assert naive["results"], "the seeded page should not be empty"
    assert len(naive_queries) == naive_count(N), [q["sql"] for q in naive_queries]
    assert len(optimized_queries) == optimized_count, [q["sql"] for q in optimized_queries]


@pytest.mark.parametrize("path", [t[0].split("?")[0] for t in TWINS if "lookup" not in t[0]])
def test_twins_agree_at_the_default_limit(hms_client: Any, hms_cache: Any, path: str) -> None:
    naive = _get_json(hms_client, path)
    assert naive == _get_json(hms_client, _twin(path))
    assert 0 < len(naive["results"]) <= 50


def test_lists_are_limited(hms_client: Any) -> None:
    assert len(_get_json(hms_client, "/encounters/optimized/")["results"]) == 50
    assert len(_get_json(hms_client, "/encounters/optimized/?limit=0")["results"]) == 1
    assert len(_get_json(hms_client, "/encounters/optimized/?limit=120")["results"]) == 120
    assert hms_client.get("/encounters/?limit=ten").status_code == 400
    assert hms_client.get("/patients/lookup/?ids=1,x").status_code == 400


def test_limit_is_capped_at_200(sample_app: None) -> None:
    from django.test import RequestFactory

    from hms_otel_agent.sample.hms.views import _limit

    assert _limit(RequestFactory().get("/", {"limit": "100000"})) == 200
    assert _limit(RequestFactory().get("/")) == 50


def test_payload_shapes(hms_client: Any) -> None:
    patients = _get_json(hms_client, "/patients/?limit=2")["results"]
    assert patients[0]["id"] == 1 and patients[0]["insurance"] is not None
    assert patients[1]["id"] == 2 and patients[1]["insurance"] is None
    assert patients[0]["emergency_contacts"]

    encounter = _get_json(hms_client, "/encounters/?limit=1")["results"][0]
    assert encounter["patient"]["id"] == 1 and encounter["insurance"] == patients[0]["insurance"]

    notes = _get_json(hms_client, "/notes/?limit=2")["results"]
    assert [n["subject"]["type"] for n in notes] == ["patient", "encounter"]

    lookup = _get_json(hms_client, "/patients/lookup/?ids=2,9999,1")
    assert [r["id"] for r in lookup["results"]] == [2, 1] and lookup["missing"] == [9999]

    schedule = _get_json(hms_client, "/appointments/schedule/?limit=12")["results"]
    assert len(schedule) == 12 and all(row["departments"] for row in schedule)
    assert any(row["upcoming"] for row in schedule)

    facilities = _get_json(hms_client, "/facilities/")["results"]
    assert sum(f["encounters"] for f in facilities) == 120

    raw = _get_json(hms_client, "/reports/raw-encounters/?limit=2")["results"]
    assert [r["patient_id"] for r in raw] == [1, 2] and all(len(r["encounters"]) == 3 for r in raw)


def test_search_filters_on_identifying_values(hms_client: Any, count_queries: Callable[[], Any]) -> None:
    first = _get_json(hms_client, "/patients/lookup/?ids=1")["results"][0]
    given = first["name"].split()[0]
    with count_queries() as queries:
        by_name = _get_json(hms_client, f"/patients/search/?q={given.lower()}")["results"]
    assert len(queries) == 1
    assert by_name and all(given.lower() in r["name"].lower() for r in by_name)
    by_mrn = _get_json(hms_client, f"/patients/search/?q={given}&mrn={first['mrn']}")["results"]
    assert [r["id"] for r in by_mrn] == [1]


def test_health_and_index_touch_nothing(hms_client: Any, count_queries: Callable[[], Any]) -> None:
    with count_queries() as queries:
        assert _get_json(hms_client, "/health/") == {"status": "ok"}
        endpoints = _get_json(hms_client, "/")["endpoints"]
    assert len(queries) == 0
    assert "/patients/<int:pk>/summary/" in endpoints and "/stats/" in endpoints


def test_duplicate_patient_fails_with_the_mrn_in_the_error(hms_client: Any, hms_client_500: Any) -> None:
    from django.db import IntegrityError

    from hms_otel_agent.sample.hms.models import Patient

    before = Patient.objects.count()
    mrn = Patient.objects.get(pk=1).mrn
    with pytest.raises(IntegrityError, match=mrn):
        hms_client.post("/patients/duplicate/")
    assert hms_client_500.post("/patients/duplicate/?pk=3").status_code == 500
    assert hms_client_500.get("/patients/duplicate/").status_code == 405
    assert Patient.objects.count() == before


def test_boom_raises_with_the_mrn(hms_client: Any, hms_client_500: Any) -> None:
    with pytest.raises(ValueError, match="bad patient MRN-000042"):
        hms_client.get("/boom/?mrn=MRN-000042")
    assert hms_client_500.get("/boom/?mrn=MRN-000042").status_code == 500


def test_unknown_patient_is_404(hms_client_500: Any, hms_cache: Any) -> None:
    assert hms_client_500.get("/patients/9999/summary/").status_code == 404
    assert hms_client_500.get("/patients/9999/flaky-summary/").status_code == 404
    assert hms_client_500.post("/patients/9999/touch/").status_code == 404
