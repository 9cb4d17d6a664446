"""The fix for each kind of finding, and the one-line hint that names what, where and why.

Pure functions of plain data: the live processor and `hms-otel analyze` produce the same text.
"""

from __future__ import annotations

import hashlib

from hms_otel_agent.signals import fixes
from hms_otel_agent.signals import records as a
from hms_otel_agent.signals.records import CodeLocation, OrmContext

# Statements that repeat for reasons that are not N+1 queries.
TRANSACTION_OPERATIONS = frozenset(("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT", "SET", "SHOW"))


def finding_fingerprint(*parts: str) -> str:
    """A stable id (16 hex digits) for a finding, the same in every process and run."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "replace"), digest_size=8).hexdigest()


def site_fingerprint(kind: str, key: str, location: CodeLocation | None) -> str:
    """A finding's fingerprint from its kind, what it is about, and the code site (not the line,
    which moves with every edit above it)."""
    return finding_fingerprint(
        kind, key, location.file if location else "", location.function if location else ""
    )


def query_noun(model: str, table: str) -> str:
    """``Patient query``, or ``query on hms_encounter`` without the ORM."""
    return f"{short_model(model)} query" if model else f"query on {table or 'one table'}"


def short_model(label: str) -> str:
    """``hms.Encounter`` -> ``Encounter``."""
    return label.rpartition(".")[2] if label else label


def field_name(relation: str) -> str:
    """``hms.Encounter.patient`` -> ``patient``."""
    return relation.rpartition(".")[2] if relation else relation


class OrmFix:
    """The fix of a repeated ORM operation as shown: text, kind, the action sentence, and the
    structural fix behind it (None for the text-only fixes of offline analysis)."""

    __slots__ = ("action", "fix", "kind", "pending", "structural", "text")

    def __init__(
        self, text: str, kind: str, action: str, structural: fixes.Fix | None, pending: bool = False
    ) -> None:
        self.text, self.kind, self.action, self.structural = text, kind, action, structural
        self.fix = text
        self.pending = pending


_ON_QUERYSET = frozenset(
    (
        fixes.SELECT_RELATED,
        fixes.PREFETCH_RELATED,
        fixes.PREFETCH_QUERYSET,
        fixes.GENERIC_PREFETCH,
        fixes.ANNOTATE,
    )
)


def action_of(fix: fixes.Fix, text: str) -> str:
    """``add .select_related('patient') to the Encounter queryset`` and the like."""
    if fix.kind in _ON_QUERYSET:
        if fix.change:  # the queryset part, then the code change (`placed` says where each goes)
            calls = text[: -len(f", and {fix.change}")] if text.endswith(f", and {fix.change}") else text
            return f"add {calls} to the {short_model(fix.root)} queryset, and {fix.change}"
        return f"add {text} to the {short_model(fix.root)} queryset"
    if fix.kind in (fixes.IN_BULK, fixes.DICT_QUERY):
        return f"query once before the loop: {text}"
    if fix.kind == fixes.ADMIN_GET_QUERYSET:
        return f"override {text}"
    return f"set {text}"


_PLACED = frozenset((*_ON_QUERYSET, fixes.ADMIN_LIST_SELECT_RELATED, fixes.ADMIN_GET_QUERYSET))


def placed(shown: OrmFix, origin: CodeLocation | None, location: CodeLocation | None) -> str:
    """The action with the place to make it: ``add X to the Visit queryset at api.py:16 in
    VisitViewSet`` (where the queryset came from), when that is not where the load ran."""
    action = shown.action
    if origin is None or origin == location or not shown.text:
        return action
    change = shown.structural.change if shown.structural is not None else ""
    if change and shown.kind in _PLACED and action.endswith(f", and {change}"):
        # Two places: the queryset where the list is built, the code that reads the relation
        # (a model method calling .filter() on the related manager per row).
        queryset = action[: -len(f", and {change}")]
        return f"{queryset} at {origin}, and {change}{where(location)}"
    if shown.kind in _PLACED or (not shown.kind and shown.structural is None):
        return f"{action} at {origin}"
    return action


def checked_fix(fix: fixes.Fix) -> OrmFix:
    """A structural fix as shown once checked: pending or failed checks show no fix and say so."""
    if fix.kind not in fixes.FIX_KINDS:  # no test applies it: not offered
        return OrmFix("", "", "no fix shown", fix)
    verdict = fixes.verdict(fix)
    if verdict is None:
        return OrmFix("", "", "fix being checked (shown once it compiles)", fix, pending=True)
    if not verdict.ok:
        return OrmFix(
            "", "", f"no fix shown: the fix derived from the models failed its check ({verdict.reason})", fix
        )
    text = fix.text
    return OrmFix(text, fix.kind, action_of(fix, text), fix)


def lazy_fix(orm: OrmContext, targets: tuple[str, ...] = ()) -> OrmFix:
    """The fix of a repeated lazy load or get(): from the models' structure when the ORM recorded
    it (live), else the text of the relation's kind (offline analysis of other agents' spans)."""
    fix = fixes.derive(orm, targets)
    if fix is not None:
        return checked_fix(fix)
    if orm.kind in (a.DEFERRED, a.REFRESH):
        text = orm_fix(orm)
        return OrmFix(text, "", text, None)
    if orm.kind == a.GET and orm.facts.descriptor:
        return OrmFix(
            "",
            "",
            f"no fix shown: {orm.facts.descriptor} loads one {short_model(orm.model)} per object;"
            " prefetch them on the list's queryset if the field supports prefetching",
            None,
        )
    if orm.kind == a.GET:
        model = short_model(orm.model)
        return OrmFix("", "", f"fetch the {model} rows in one query before the loop", None)
    if orm.facts.route:
        return OrmFix("", "", "no fix shown: no eager load can reach this relation from the queryset", None)
    text = orm_fix(orm)
    root = short_model(orm.root_model or orm.model)
    return OrmFix(
        text, "", f"add {text} to the {root} queryset" if root else f"add {text} to the queryset", None
    )


def orm_fix(orm: OrmContext) -> str:
    """The change that removes a repeated lazy load, as code (from the relation's kind alone:
    offline analysis of spans without the route)."""
    path = orm.path or field_name(orm.relation)
    kind = orm.kind
    if kind in (a.FORWARD, a.REVERSE_ONE_TO_ONE):
        return f".select_related('{path}')"
    if kind in (a.REVERSE_FK, a.MANY_TO_MANY, a.GENERIC_RELATION):
        if orm.filtered:
            to_attr = f"{field_name(orm.relation)}_list"
            prefetch = f"Prefetch('{path}', queryset=<the filtered queryset>, to_attr='{to_attr}')"
            return f".prefetch_related({prefetch})"
        return f".prefetch_related('{path}')"
    if kind == a.GENERIC_FK:
        return (
            f".prefetch_related('{path}')  # or GenericPrefetch('{field_name(orm.relation)}', [...]) per type"
        )
    if kind == a.DEFERRED:
        name = field_name(orm.relation)
        return f"add '{name}' to .only(...) or drop it from .defer(...)"
    if kind == a.RELATED_COUNT:
        name = field_name(orm.relation)
        return f".annotate({name}_count=Count('{path}'))"
    if kind == a.RELATED_EXISTS:
        name = field_name(orm.relation)
        return f".annotate(has_{name}=Exists(...))  # or .prefetch_related('{path}')"
    if kind == a.GET:
        return f"{short_model(orm.model)}.objects.in_bulk(ids)  # or .filter(pk__in=ids)"
    if kind == a.REFRESH:
        return f"re-read them at once: {short_model(orm.model)}.objects.filter(pk__in=ids)"
    return ""


def write_fix(operation: str, model: str) -> str:
    """Fix for the same write repeated in a loop."""
    name = short_model(model) if model else "Model"
    if operation == "INSERT":
        return f"{name}.objects.bulk_create([...])"
    if operation == "UPDATE":
        return f"{name}.objects.bulk_update(objs, fields) or .filter(...).update(...)"
    if operation == "DELETE":
        return f"{name}.objects.filter(pk__in=ids).delete()"
    return ""


def batch_fix(table: str, columns: tuple[str, ...], orm_model: str = "") -> str:
    """Fix for one statement repeated with different values and no relation behind it."""
    column = columns[0] if columns else "id"
    if orm_model:
        return f"{short_model(orm_model)}.objects.filter({column}__in=values) once, outside the loop"
    target = table or "the table"
    return f"one query for all values: SELECT ... FROM {target} WHERE {column} = ANY(%s)"


def where(location: CodeLocation | None) -> str:
    return f" at {location}" if location is not None else ""


def lazy_subject(orm: OrmContext) -> str:
    """``Encounter.patient loaded lazily`` and the like."""
    relation = orm.relation.partition(".")[2] or orm.relation
    if orm.kind == a.DEFERRED:
        return f"deferred field {relation} loaded"
    if orm.kind == a.RELATED_COUNT:
        return f"{relation}.count() run"
    if orm.kind == a.RELATED_EXISTS:
        return f"{relation}.exists() run"
    if orm.kind == a.GET:
        return f"{short_model(orm.model)}.objects.get() run"
    if orm.kind == a.REFRESH:
        return f"{short_model(orm.model)}.refresh_from_db() run"
    return f"{relation} loaded lazily"


def sentence(
    owner: str, subject: str, count: int, duration_ms: float, location: CodeLocation | None, fix: str
) -> str:
    """``GET encounters/: Encounter.patient loaded lazily 50x (38 ms) at views.py:87 in f — fix``."""
    text = f"{owner}: {subject} {count}x ({duration_ms:.1f} ms){where(location)}"
    return f"{text} — {fix}" if fix else text
