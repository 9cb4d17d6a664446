"""Slow queries and plan summaries on plain records: the index hint, and no literal in a plan."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hms_otel_agent import config
from hms_otel_agent.signals import plans, registry, slow_queries
from hms_otel_agent.signals.activity import CodeLocation, DbCall, OrmContext, OwnerActivity, PlanSummary
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.slow_queries import detect
from hms_otel_agent.signals.sql_summary import read_only_select

SETTINGS = dataclasses.replace(config.load({}).settings, slow_query_ms=100.0)
VIEW = CodeLocation("hms/views.py", 30, "search")
SEARCH = 'SELECT "hms_encounter"."id" FROM "hms_encounter" WHERE "hms_encounter"."reason" = %s'


def call(sql: str = SEARCH, ms: float = 150.0) -> DbCall:
    fp = fingerprint_sql(sql)
    return DbCall(
        fingerprint=fp.digest,
        statement=fp.normalized,
        start_ns=0,
        duration_ns=int(ms * 1e6),
        table=fp.table,
        filter_columns=fp.filter_columns,
        orm=OrmContext(model="hms.Encounter", kind="query", location=VIEW),
    )


def owner(*calls: DbCall, plan: PlanSummary | None = None) -> OwnerActivity:
    activity = OwnerActivity(name="GET encounters/search/", route="encounters/search/", db_calls=list(calls))
    if plan is not None:
        activity.plans[plan.fingerprint] = plan
    return activity


def test_a_slow_statement_without_a_plan_says_how_to_get_one() -> None:
    [finding] = detect(owner(call(ms=150.0), call(ms=250.0), call(ms=20.0)), SETTINGS)
    assert finding.kind == "slow_query"
    assert (finding.repetitions, finding.duration_ms) == (2, 400.0)
    assert finding.fix == (
        "EXPLAIN it (HMS_OTEL_EXPLAIN=true attaches the plan); a sequential scan of hms_encounter "
        "filtered on (reason) needs an index on them"
    )
    assert finding.hint.startswith(
        "GET encounters/search/: slow Encounter query (up to 250 ms) run 2x (400.0 ms)"
    )
    assert finding.table == "hms_encounter" and finding.columns == ()


def test_fast_statements_and_transaction_statements_are_not_slow() -> None:
    assert detect(owner(call(ms=99.0)), SETTINGS) == []
    assert detect(owner(call("COMMIT", ms=900.0), call("SAVEPOINT s1", ms=900.0)), SETTINGS) == []


def test_the_plan_gives_the_index_to_create() -> None:
    slow = call()
    plan = PlanSummary(
        slow.fingerprint, 700.0, 12, ("Seq Scan on hms_encounter ...",), "hms_encounter", ("reason",)
    )
    [finding] = detect(owner(slow, plan=plan), SETTINGS)
    assert finding.fix == (
        "CREATE INDEX CONCURRENTLY hms_encounter_reason_idx ON hms_encounter (reason)"
        "  # Django: Meta.indexes = [models.Index(fields=['reason'])] on Encounter"
    )
    assert (finding.table, finding.columns) == ("hms_encounter", ("reason",))
    # the finding's fingerprint does not depend on the plan: one row in the report
    assert finding.fingerprint == detect(owner(slow), SETTINGS)[0].fingerprint


def test_a_plan_without_an_index_names_its_costliest_step() -> None:
    slow = call()
    plan = PlanSummary(slow.fingerprint, 900.0, 10, ("Sort cost=900.0 rows=10", "Index Scan ..."))
    [finding] = detect(owner(slow, plan=plan), SETTINGS)
    assert finding.fix.startswith("the plan's costliest step is Sort cost=900.0 rows=10")


def seq_scan(
    filter_text: str, rows: int = 12, cost: float = 700.0, relation: str = "hms_encounter"
) -> dict[str, Any]:
    return {
        "Node Type": "Seq Scan",
        "Relation Name": relation,
        "Total Cost": cost,
        "Plan Rows": rows,
        "Filter": filter_text,
    }


def explained(*nodes: dict[str, Any], top_cost: float = 710.0) -> list[dict[str, Any]]:
    return [{"Plan": {"Node Type": "Limit", "Total Cost": top_cost, "Plan Rows": 12, "Plans": list(nodes)}}]


def test_summarize_a_filtered_sequential_scan_over_a_large_table() -> None:
    filter_text = "((reason)::text = 'Chest pain'::text)"
    summary = plans.summarize("fp", explained(seq_scan(filter_text)), {"hms_encounter": 30_000}, 10_000)
    assert summary == PlanSummary(
        fingerprint="fp",
        total_cost=710.0,
        plan_rows=12,
        nodes=(
            "Seq Scan on hms_encounter filter (reason) cost=700.0 rows=12 table_rows=30000",
            "Limit cost=710.0 rows=12",
        ),
        index_table="hms_encounter",
        index_columns=("reason",),
    )


def test_no_index_hint_for_small_tables_or_unselective_filters() -> None:
    plan = explained(seq_scan("((reason)::text = 'x'::text)"))
    assert plans.summarize("fp", plan, {"hms_encounter": 5_000}, 10_000).index_table == ""  # type: ignore[union-attr]
    unselective = explained(seq_scan("((status)::text = 'finished'::text)", rows=20_000))
    assert plans.summarize("fp", unselective, {"hms_encounter": 30_000}, 10_000).index_table == ""  # type: ignore[union-attr]
    unfiltered = explained(
        {"Node Type": "Seq Scan", "Relation Name": "hms_encounter", "Total Cost": 700.0, "Plan Rows": 30_000}
    )
    assert plans.summarize("fp", unfiltered, {"hms_encounter": 30_000}, 10_000).index_table == ""  # type: ignore[union-attr]
    assert plans.summarize("fp", {"not": "a plan"}) is None


PHI = "Jane O'Hara 1984-03-02 MRN-004211"


@pytest.mark.parametrize(
    ("condition", "columns"),
    [
        ("((family_name)::text = 'Jane O''Hara'::text)", ("family_name",)),
        ("((e.status)::text = ANY ('{MRN-004211,x}'::text[]))", ("status",)),
        ("(upper((family_name)::text) ~~ '%O''HARA%'::text)", ("family_name",)),
        (
            "((date_of_birth = '1984-03-02'::date) AND "
            "(created_at >= '2024-01-01 00:00:00+00'::timestamp with time zone))",
            ("date_of_birth", "created_at"),
        ),
        ('("Weird Col" = $1)', ()),  # a quoted name that is not a lower-case word is masked
        ("(patient_id = 4211)", ("patient_id",)),
        ("(national_id IS NOT NULL)", ("national_id",)),
    ],
)
def test_condition_columns_keep_names_and_drop_every_value(condition: str, columns: tuple[str, ...]) -> None:
    assert plans.condition_columns(condition) == columns


def test_a_summary_holds_no_literal() -> None:
    node = seq_scan(f"((family_name)::text = '{PHI.replace(chr(39), chr(39) * 2)}'::text)")
    node["Index Cond"] = "(id = 4211)"
    node["Sort Key"] = [f"'{PHI}'"]
    summary = plans.summarize("fp", explained(node), {"hms_encounter": 30_000})
    text = repr(summary)
    for part in ("Jane", "Hara", "1984", "MRN", "4211"):
        assert part not in text


@pytest.mark.parametrize(
    ("sql", "ok"),
    [
        ("SELECT a FROM t WHERE b = %s", True),
        ("  select a from t", True),
        ("SELECT a FROM t FOR UPDATE", False),
        ("SELECT a FROM t FOR NO KEY UPDATE", False),
        ("SELECT a INTO new_table FROM t", False),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", False),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1", False),
        ("SELECT 1; DROP TABLE t", False),
        ("EXPLAIN ANALYZE SELECT 1", False),
    ],
)
def test_only_plain_selects_are_explained(sql: str, ok: bool) -> None:
    assert read_only_select(sql) is ok


def test_registered() -> None:
    assert slow_queries.detect in registry.DETECTORS
