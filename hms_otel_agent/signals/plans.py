"""Query plans (PostgreSQL ``EXPLAIN (FORMAT JSON)``, never ANALYZE) reduced to what may leave
the process: node types, relations, index names, column names, costs and row estimates.

Plan text holds the statement's values: a ``Filter`` reads ``((reason)::text = 'chest
pain'::text)`` when the parameters were bound on the client. Conditions are therefore never
exported, not even masked: only the column names read from them (`condition_columns`, after
the literals are masked and casts dropped) are.

Index hint: the costliest sequential scan whose ``Filter`` names columns, over a table with at
least ``seq_scan_rows`` rows (``pg_class.reltuples``), that keeps at most a fifth of them (an
index pays off for selective conditions), gets ``CREATE INDEX ... ON table (columns)``.
Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from hms_otel_agent.signals import hints
from hms_otel_agent.signals.activity import PlanSummary
from hms_otel_agent.signals.sql_mask import mask_sql_literals

MAX_NODES = 5
MAX_INDEX_COLUMNS = 3
SELECTIVE = 0.2  # a filter that keeps at most this share of the table's rows

_CAST = re.compile(
    r"::\s*(?:\"[^\"]*\"|[A-Za-z_][\w$]*(?:\s+(?:with|without|varying|precision|zone|time))*)"
    r"(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\[\])*"
)
_IDENT = re.compile(r'(?:(?:"[^"]+"|[A-Za-z_][\w$]*)\.)?("[^"]+"|[A-Za-z_][\w$]*)(\s*\()?')
_KEYWORDS = """and or not is null true false any all some in like ilike similar to between array
    distinct from case when then else end exists escape collate at time zone with without
    interval current_date current_time current_timestamp localtime localtimestamp subplan
    initplan returns hashed"""
_NOT_COLUMNS = frozenset(_KEYWORDS.split())
_CONDITIONS = ("Filter", "Index Cond", "Recheck Cond", "Join Filter", "Hash Cond", "Merge Cond")
_SEQ_SCAN = "Seq Scan"


def condition_columns(condition: str) -> tuple[str, ...]:
    """Column names in a plan condition, in order, without literals, casts, functions,
    operators or table qualifiers: ``((reason)::text = 'x'::text)`` -> ``("reason",)``."""
    if not condition:
        return ()
    text = _CAST.sub(" ", mask_sql_literals(condition))
    columns: list[str] = []
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call:
            continue  # a function name
        start = match.start()
        if start and text[start - 1] == "$":
            continue  # $1: a parameter
        name = name.strip('"') if name.startswith('"') else name.lower()
        if name.lower() in _NOT_COLUMNS or name in columns or name == "?":  # "?": masked
            continue
        columns.append(name)
    return tuple(columns)


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans") or ():
        if isinstance(child, Mapping):
            yield from _nodes(child)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def root_plan(explained: Any) -> Mapping[str, Any] | None:
    """The top plan node of ``EXPLAIN (FORMAT JSON)`` output (a list with one object)."""
    if isinstance(explained, list) and explained:
        explained = explained[0]
    if isinstance(explained, Mapping):
        plan = explained.get("Plan")
        if isinstance(plan, Mapping):
            return plan
    return None


def relations(explained: Any) -> list[str]:
    """Relation names the plan reads (to look their sizes up)."""
    root = root_plan(explained)
    if root is None:
        return []
    found = [str(n["Relation Name"]) for n in _nodes(root) if n.get("Relation Name")]
    return list(dict.fromkeys(found))


def _own_cost(node: Mapping[str, Any]) -> float:
    children = sum(_number(c.get("Total Cost")) for c in node.get("Plans") or () if isinstance(c, Mapping))
    return max(0.0, _number(node.get("Total Cost")) - children)


def describe(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> str:
    """``Seq Scan on hms_encounter filter (reason) cost=1234.5 rows=12 table_rows=30000``."""
    kind = str(node.get("Node Type") or "?")
    if node.get("Parallel Aware") is True:
        kind = "Parallel " + kind
    parts = [kind]
    relation = node.get("Relation Name")
    if relation:
        parts.append(f"on {relation}")
    if node.get("Index Name"):
        parts.append(f"using {node['Index Name']}")
    for key in _CONDITIONS:
        columns = condition_columns(str(node.get(key) or ""))
        if columns:
            parts.append(f"{key.lower()} ({', '.join(columns)})")
    parts.append(f"cost={_number(node.get('Total Cost')):.1f} rows={int(_number(node.get('Plan Rows')))}")
    if relation and relation in table_rows:
        parts.append(f"table_rows={int(table_rows[relation])}")
    return " ".join(parts)


def summarize(
    fingerprint: str,
    explained: Any,
    table_rows: Mapping[str, float] | None = None,
    seq_scan_rows: int = 10_000,
    max_nodes: int = MAX_NODES,
) -> PlanSummary | None:
    """The costliest nodes and the index the plan asks for; None when `explained` is not a plan."""
    root = root_plan(explained)
    if root is None:
        return None
    sizes = dict(table_rows or {})
    nodes = list(_nodes(root))
    costly = sorted(nodes, key=lambda n: -_own_cost(n))[:max_nodes]
    index_table = ""
    index_columns: tuple[str, ...] = ()
    for node in costly:
        if node.get("Node Type") != _SEQ_SCAN or not node.get("Relation Name"):
            continue
        table = str(node["Relation Name"])
        columns = condition_columns(str(node.get("Filter") or ""))
        size = sizes.get(table, -1.0)
        if not columns or size < seq_scan_rows or size <= 0:
            continue
        if _number(node.get("Plan Rows")) > size * SELECTIVE:
            continue
        index_table, index_columns = table, columns[:MAX_INDEX_COLUMNS]
        break
    return PlanSummary(
        fingerprint=fingerprint,
        total_cost=round(_number(root.get("Total Cost")), 2),
        plan_rows=int(_number(root.get("Plan Rows"))),
        nodes=tuple(describe(n, sizes) for n in costly),
        index_table=index_table,
        index_columns=index_columns,
    )


def index_fix(table: str, columns: tuple[str, ...], model: str = "") -> str:
    """``CREATE INDEX CONCURRENTLY hms_encounter_reason_idx ON hms_encounter (reason)`` and the
    Django way to say it."""
    name = "_".join((table, *columns))[:59] + "_idx"
    sql = f"CREATE INDEX CONCURRENTLY {name} ON {table} ({', '.join(columns)})"
    fields = ", ".join(f"'{c[:-3] if c.endswith('_id') else c}'" for c in columns)
    owner = f" on {hints.short_model(model)}" if model else ""
    return f"{sql}  # Django: Meta.indexes = [models.Index(fields=[{fields}])]{owner}"
