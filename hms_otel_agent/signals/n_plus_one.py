"""N+1 queries and duplicate queries under one owner span.

A group is one SQL fingerprint under one owner or, for lazy loads, one ORM relation: the
same ``SELECT ... FROM hms_patient WHERE id = %s`` serves ``Encounter.patient`` and
``Appointment.patient``, and each needs its own fix, while a GenericForeignKey's lazy loads
hit several tables and need one. Repeats count wherever they happen
under the owner, not only as consecutive siblings: ``for e in encounters: e.patient;
e.facility`` is two findings.

A statement repeated with the same parameters every time is a duplicate (run it once), not an
N+1; one list read in LIMIT/OFFSET slices (the same parameters, only the inline LIMIT/OFFSET
differs) is neither — offline too: the live agent writes the fingerprints it found read in
slices on the owner span (``hms.db.paged``) and offline analysis reads them back (it has no
parameters to compare). A finding's fingerprint is its cause: the relation (or statement) and where
the queryset came from (`Finding.origin`, where its fix goes), so one relation reached from
several call sites of one queryset is one finding, and two querysets are two. Duplicates of
several statements from one template line are one finding at that line. Duplicates of two
executions under a millisecond in all are folded into one summary finding per owner unless
``HMS_OTEL_TRIVIAL_DUPLICATES`` asks for each.
"""

from __future__ import annotations

import dataclasses

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import fixes, hints
from hms_otel_agent.signals import records as a
from hms_otel_agent.signals.records import (
    CodeLocation,
    DbCall,
    Finding,
    OwnerActivity,
    most_common,
    outside_cache_calls,
    total_ms,
)

N_PLUS_ONE = "n_plus_one"
DUPLICATE_QUERY = "duplicate_query"
TRIVIAL_MS = 1.0  # a duplicate of two executions under this, in all, is trivial
MAX_TRIVIAL_MEMBERS = 10
MAX_MEMBER_CHARS = 160

# How the executions of one statement differ.
VARYING, SAME, PAGES = "varying", "same", "pages"


def repeat_shape(calls: list[DbCall]) -> str:
    """SAME: one statement with the same parameters every time; PAGES: the same parameters and
    only the statement's inline LIMIT/OFFSET differs (slices of one list); VARYING otherwise or
    when the parameters are not known (offline analysis)."""
    params = {c.params_hash for c in calls}
    if len(params) != 1 or None in params:
        return VARYING
    texts = {c.text_hash for c in calls}
    if len(texts) == 1:
        return SAME
    statement = calls[0].statement
    if None not in texts and (" LIMIT ?" in statement or " OFFSET ?" in statement):
        return PAGES
    return VARYING


# Django caches ContentType lookups per process: their repeats are a cold cache, once.
_PROCESS_CACHED = frozenset(("contenttypes.ContentType",))


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    groups: dict[tuple[str, str, str], list[DbCall]] = {}
    # SQL a cache call runs itself (DatabaseCache) is the cache's, not the application's.
    db_calls = outside_cache_calls(activity.db_calls, activity.cache_calls) if activity.cache_calls else None
    for call in activity.db_calls if db_calls is None else db_calls:
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
    structural: list[tuple[Finding, fixes.Fix]] = []
    generic_types = _generic_types(activity)
    for key, calls in groups.items():
        if len(calls) < settings.n_plus_one_threshold:
            continue
        if calls[0].operation in hints.TRANSACTION_OPERATIONS:
            continue
        if key[0]:  # by statement, not a relation: the same parameters are a duplicate
            # Offline the parameters are not known: the live agent's verdict on the owner span.
            shape = PAGES if calls[0].fingerprint in activity.paged else repeat_shape(calls)
            if shape == PAGES:
                activity.paged.add(calls[0].fingerprint)  # written on the owner span (offline: read)
                n_plus_one_fingerprints.add(calls[0].fingerprint)  # nor a duplicate
                continue
            if shape == SAME:
                continue
        duration_ms = total_ms(calls)
        if duration_ms < settings.n_plus_one_min_duration_ms:
            continue
        if key[0] and calls[0].orm is not None and calls[0].orm.model in _PROCESS_CACHED:
            n_plus_one_fingerprints.add(calls[0].fingerprint)
            continue
        finding, fix = _n_plus_one(activity, calls, duration_ms, generic_types)
        if finding is not None:
            findings.append(finding)
            n_plus_one_fingerprints.add(calls[0].fingerprint)
            if fix is not None:
                structural.append((finding, fix))
    if len(structural) > 1:
        findings = _combined(activity, findings, structural)
    findings.extend(_duplicates(activity, settings, n_plus_one_fingerprints, db_calls))
    findings.sort(key=lambda f: -f.duration_ms)
    return findings


def _generic_types(activity: OwnerActivity) -> dict[tuple[str, str], set[str]]:
    """The types each GenericForeignKey on a route loaded under this owner, by (root model,
    path to it): a GenericPrefetch needs a queryset for each."""
    found: dict[tuple[str, str], set[str]] = {}
    seen: set[int] = set()
    for call in activity.db_calls:
        orm = call.orm
        if orm is None or not orm.facts.route or id(orm) in seen:
            continue
        seen.add(id(orm))
        names = []
        for step in orm.facts.route:
            names.append(step.name)
            if step.kind == a.GENERIC_FK and step.model:
                found.setdefault((orm.root_model, "__".join(names)), set()).add(step.model)
    return found


def _targets(orm: a.OrmContext, generic_types: dict[tuple[str, str], set[str]]) -> tuple[str, ...]:
    names = []
    for step in orm.facts.route:
        names.append(step.name)
        if step.kind == a.GENERIC_FK:
            return tuple(sorted(generic_types.get((orm.root_model, "__".join(names)), ())))
    return ()


def _orm_fix(
    lazy: list[a.OrmContext], orm: a.OrmContext, generic_types: dict[tuple[str, str], set[str]]
) -> hints.OrmFix:
    """One relation's count(), exists() and aggregate() per row are one annotate()."""
    kinds = {o.kind: o for o in lazy if o.kind in (a.RELATED_COUNT, a.RELATED_EXISTS, a.RELATED_AGGREGATE)}
    if len(kinds) > 1:
        parts = [fixes.derive(o) for o in kinds.values()]
        if all(p is not None and p.kind == fixes.ANNOTATE for p in parts):
            merged = fixes.merge_annotations([p for p in parts if p is not None])
            if merged is not None:
                return hints.checked_fix(merged)
    return hints.lazy_fix(orm, _targets(orm, generic_types))


def _n_plus_one(
    activity: OwnerActivity,
    calls: list[DbCall],
    duration_ms: float,
    generic_types: dict[tuple[str, str], set[str]],
) -> tuple[Finding | None, fixes.Fix | None]:
    first = calls[0]
    orms = [c.orm for c in calls if c.orm is not None]
    lazy = [o for o in orms if o.lazy]
    orm = most_common(lazy or orms)
    location = most_common(o.location for o in orms)
    origin = most_common(o.origin for o in (lazy or orms))
    owner = activity.name or activity.route
    operation = first.operation
    count = len(calls)
    structural = None
    fix_kind = ""
    if orm is not None and (orm.lazy or orm.kind in (a.GET, a.REFRESH)):
        shown = _orm_fix(lazy, orm, generic_types)
        fix, action, fix_kind = shown.text, hints.placed(shown, origin, location), shown.kind
        if shown.text or shown.pending:  # a pending fix may still join the page's combined fix
            structural = shown.structural
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
    # A relation's SQL may vary (GenericForeignKey): the relation identifies the finding, with
    # where its queryset came from (its cause), else where it ran.
    # Two paths to one relation (termination_a__circuit, termination_z__circuit) are two.
    key = f"{relation}\x1f{orm.path}" if relation and orm is not None and orm.path else relation
    fingerprint = hints.site_fingerprint(N_PLUS_ONE, key or first.fingerprint, origin or location)
    finding = Finding(
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
        fix_kind=fix_kind,
        origin=origin,
    )
    return finding, structural


def _combined(
    activity: OwnerActivity, findings: list[Finding], structural: list[tuple[Finding, fixes.Fix]]
) -> list[Finding]:
    """Findings whose fixes go on one queryset (the same root model, the same ModelAdmin) under
    this owner get one fix with all their relations — a property that reads two relations, a
    nested serializer — once that combined fix has been checked."""
    by_root: dict[tuple[str, str], list[tuple[Finding, fixes.Fix]]] = {}
    for finding, fix in structural:
        by_root.setdefault((fix.root, fix.admin), []).append((finding, fix))
    replaced: dict[int, Finding] = {}
    for members in by_root.values():
        if len({fix for _, fix in members}) < 2:
            continue
        combined = fixes.combine(fix for _, fix in members)
        if combined is None:
            continue
        shown = hints.checked_fix(combined)
        if not shown.text:
            continue
        for finding, _ in members:
            prefix = finding.hint.rpartition(" — ")[0] or finding.hint
            hint = f"{prefix} — {hints.placed(shown, finding.origin, finding.location)}"
            replaced[id(finding)] = dataclasses.replace(
                finding, fix=shown.text, fix_kind=shown.kind, hint=hint
            )
    return [replaced.get(id(f), f) for f in findings]


def _duplicates(
    activity: OwnerActivity, settings: Settings, covered: set[str], db_calls: list[DbCall] | None
) -> list[Finding]:
    """The same statement with the same parameters, run again: the result could be reused."""
    groups: dict[tuple[str, int, int | None], list[DbCall]] = {}
    for call in activity.db_calls if db_calls is None else db_calls:
        if call.params_hash is not None and call.fingerprint not in covered:
            groups.setdefault((call.fingerprint, call.params_hash, call.text_hash), []).append(call)
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
        fix_kind = ""
        admin = next((o.facts.admin for o in orms if o.kind == "count" and o.facts.admin), "")
        if admin:  # a changelist's paginator count and its unfiltered total
            shown = hints.checked_fix(fixes.admin_count_fix(model, admin))
            if shown.text:
                fix, fix_kind = shown.text, shown.kind
        # A related manager's query is named by its relation (``User.notifications``), not by
        # the model of the instance it hangs off.
        what = f"{relation.partition('.')[2]} query" if relation else hints.query_noun(model, first.table)
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
                fix_kind=fix_kind,
            )
        )
    findings = _by_template_line(activity, findings)
    if settings.trivial_duplicates:
        return findings
    return _fold_trivial(activity, findings)


TEMPLATE_FUNCTION = "template"  # a CodeLocation of a template line (instrument/context.py)


def _by_template_line(activity: OwnerActivity, findings: list[Finding]) -> list[Finding]:
    """Duplicates of several statements run again from one template line (a fragment included
    twice, a bound ``qs.count`` in the context read by ``{% if %}`` and again by ``{{ }}``) are
    one cause: one finding at that line, its statements as members."""
    by_line: dict[CodeLocation, list[Finding]] = {}
    for finding in findings:
        location = finding.location
        if location is not None and location.function == TEMPLATE_FUNCTION and not finding.fix_kind:
            by_line.setdefault(location, []).append(finding)
    merged = {id(f): line for line, group in by_line.items() if len(group) > 1 for f in group}
    if not merged:
        return findings
    kept = [f for f in findings if id(f) not in merged]
    for line, group in by_line.items():
        if len(group) < 2:
            continue
        duration_ms = sum(f.duration_ms for f in group)
        repetitions = sum(f.repetitions for f in group)
        members = tuple(sorted({f.statement[:MAX_MEMBER_CHARS] for f in group}))
        subject = f"{len(group)} statements run again with the same parameters from one template line"
        fix = "evaluate each once: in the view (a context variable) or with {% with %} in the template"
        hint = hints.sentence(activity.name or activity.route, subject, repetitions, duration_ms, line, fix)
        kept.append(
            Finding(
                kind=DUPLICATE_QUERY,
                fingerprint=hints.site_fingerprint(DUPLICATE_QUERY, "template line", line),
                repetitions=repetitions,
                duration_ms=duration_ms,
                statement=group[0].statement,
                location=line,
                fix=fix,
                hint=hint,
                route=activity.route,
                subject=subject,
                members=members[:MAX_TRIVIAL_MEMBERS],
            )
        )
    return kept


def _fold_trivial(activity: OwnerActivity, findings: list[Finding]) -> list[Finding]:
    """Duplicates of two executions under a millisecond in all (Django's and the app's own
    lookups done twice) as one summary finding per owner; a specific fix is never folded."""
    trivial = [f for f in findings if f.repetitions <= 2 and f.duration_ms < TRIVIAL_MS and not f.fix_kind]
    if not trivial:
        return findings
    kept = [f for f in findings if not any(f is t for t in trivial)]
    duration_ms = sum(f.duration_ms for f in trivial)
    members = tuple(sorted({f.statement[:MAX_MEMBER_CHARS] for f in trivial}))
    subject = f"{len(trivial)} statement(s) run twice with the same parameters, each under {TRIVIAL_MS:g} ms"
    fix = "reuse the first result where it is easy (set HMS_OTEL_TRIVIAL_DUPLICATES=true to list them)"
    kept.append(
        Finding(
            kind=DUPLICATE_QUERY,
            fingerprint=hints.finding_fingerprint(DUPLICATE_QUERY, "trivial"),
            repetitions=sum(f.repetitions for f in trivial),
            duration_ms=duration_ms,
            fix=fix,
            hint=f"{activity.name or activity.route}: {subject} ({duration_ms:.1f} ms) — {fix}",
            route=activity.route,
            subject=subject,
            members=members[:MAX_TRIVIAL_MEMBERS],
        )
    )
    return kept
