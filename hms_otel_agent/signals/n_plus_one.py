"""N+1 queries and duplicate queries under one owner span.

A group is one SQL fingerprint under one owner or, for lazy loads, one ORM relation: the
same ``SELECT ... FROM hms_patient WHERE id = %s`` serves ``Encounter.patient`` and
``Appointment.patient``, and each needs its own fix, while a GenericForeignKey's lazy loads
hit several tables and need one. Repeats count wherever they happen
under the owner, not only as consecutive siblings: ``for e in encounters: e.patient;
e.facility`` is two findings.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import activity as a
from hms_otel_agent.signals import hints
from hms_otel_agent.signals.activity import DbCall, Finding, OwnerActivity, most_common, total_ms

N_PLUS_ONE = "n_plus_one"
DUPLICATE_QUERY = "duplicate_query"

_ADD_TO_QUERYSET = frozenset(
    (
        a.FORWARD,
        a.REVERSE_ONE_TO_ONE,
        a.REVERSE_FK,
        a.MANY_TO_MANY,
        a.GENERIC_FK,
        a.GENERIC_RELATION,
        a.RELATED_COUNT,
        a.RELATED_EXISTS,
    )
)


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    groups: dict[tuple[str, str, str], list[DbCall]] = {}
    for call in activity.db_calls:
        # By statement; a lazy load by relation: one relation is one fix, whatever the SQL (a
        # GenericForeignKey loads from several tables).
        orm = call.orm
        key = (call.fingerprint, "", "") if orm is None or not orm.lazy else ("", orm.relation, orm.path)
        group = groups.get(key)
        if group is None:
            groups[key] = [call]
        else:
            group.append(call)
    findings: list[Finding] = []
    n_plus_one_fingerprints: set[str] = set()
    for calls in groups.values():
        if len(calls) < settings.n_plus_one_threshold:
            continue
        if calls[0].operation in hints.TRANSACTION_OPERATIONS:
            continue
        duration_ms = total_ms(calls)
        if duration_ms < settings.n_plus_one_min_duration_ms:
            continue
        finding = _n_plus_one(activity, calls, duration_ms)
        if finding is not None:
            findings.append(finding)
            n_plus_one_fingerprints.add(calls[0].fingerprint)
    findings.extend(_duplicates(activity, settings, n_plus_one_fingerprints))
    findings.sort(key=lambda f: -f.duration_ms)
    return findings


def _n_plus_one(activity: OwnerActivity, calls: list[DbCall], duration_ms: float) -> Finding | None:
    first = calls[0]
    orms = [c.orm for c in calls if c.orm is not None]
    lazy = [o for o in orms if o.lazy]
    orm = most_common(lazy or orms)
    location = most_common(o.location for o in orms)
    owner = activity.name or activity.route
    operation = first.operation
    count = len(calls)
    if orm is not None and (orm.lazy or orm.kind in (a.GET, a.REFRESH)):
        fix = hints.orm_fix(orm)
        if orm.kind in _ADD_TO_QUERYSET:
            root = hints.short_model(orm.root_model or orm.model)
            action = f"add {fix} to the {root} queryset" if root else f"add {fix} to the queryset"
        else:
            action = fix
        subject = hints.lazy_subject(orm)
        relation = orm.relation
        model = orm.model
        relation_kind = orm.kind
    elif operation in ("INSERT", "UPDATE", "DELETE"):
        model = orm.model if orm is not None else ""
        fix = hints.write_fix(operation, model)
        action = f"write them at once: {fix}"
        subject = f"the same {operation} on {first.table or 'one table'} run"
        relation = relation_kind = ""
    else:
        model = orm.model if orm is not None else ""
        fix = hints.batch_fix(first.table, first.filter_columns, model)
        action = f"query once: {fix}"
        what = hints.query_noun(model, first.table)
        subject = f"the same {what} run"
        relation = relation_kind = ""
    hint = hints.sentence(owner, subject, count, duration_ms, location, action)
    # A relation's SQL may vary (GenericForeignKey): the relation identifies the finding.
    fingerprint = hints.site_fingerprint(N_PLUS_ONE, relation or first.fingerprint, location)
    return Finding(
        kind=N_PLUS_ONE,
        fingerprint=fingerprint,
        repetitions=count,
        duration_ms=duration_ms,
        statement=first.statement,
        model=model,
        relation=relation,
        relation_kind=relation_kind,
        location=location,
        fix=fix,
        hint=hint,
        route=activity.route,
    )


def _duplicates(activity: OwnerActivity, settings: Settings, covered: set[str]) -> list[Finding]:
    """The same statement with the same parameters, run again: the result could be reused."""
    groups: dict[tuple[str, int], list[DbCall]] = {}
    for call in activity.db_calls:
        if call.params_hash is not None and call.fingerprint not in covered:
            groups.setdefault((call.fingerprint, call.params_hash), []).append(call)
    findings: list[Finding] = []
    for calls in groups.values():
        if len(calls) < settings.duplicate_query_threshold:
            continue
        first = calls[0]
        if first.operation in hints.TRANSACTION_OPERATIONS:
            continue
        orms = [c.orm for c in calls if c.orm is not None]
        location = most_common(o.location for o in orms)
        model = orms[0].model if orms else ""
        relation = next((o.relation for o in orms if o.relation), "")
        duration_ms = total_ms(calls)
        fix = "run it once and reuse the result (a variable, cached_property, or select_related)"
        what = hints.query_noun(model, first.table)
        hint = hints.sentence(
            activity.name or activity.route,
            f"the same {what} with the same parameters run",
            len(calls),
            duration_ms,
            location,
            fix,
        )
        findings.append(
            Finding(
                kind=DUPLICATE_QUERY,
                fingerprint=hints.site_fingerprint(DUPLICATE_QUERY, first.fingerprint, location),
                repetitions=len(calls),
                duration_ms=duration_ms,
                statement=first.statement,
                model=model,
                relation=relation,
                location=location,
                fix=fix,
                hint=hint,
                route=activity.route,
            )
        )
    return findings
