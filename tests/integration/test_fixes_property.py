"""Fixes valid by construction, over generated routes through real model graphs: any walk of
relations through the sample apps' models (forward and reverse foreign keys, one-to-ones,
many-to-many fields on both sides, django-taggit's manager, GenericForeignKeys to any model with
the next step, GenericRelations) gives a fix that compiles on those models (the agent's own
check, ``instrument/fix_check.py``: the queryset built from the fix's text, compiled, each
prefetch level walked), and never a ``select_related`` past a step it cannot join."""

from __future__ import annotations

from typing import Any

import pytest
from harness.traced import Traced
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import activity as a
from hms_otel_agent.signals import fixes
from hms_otel_agent.signals.activity import FixFacts, OrmContext, Step

SELECTABLE = {a.FORWARD, a.REVERSE_ONE_TO_ONE}


def _models() -> dict[str, Any]:
    from django.apps import apps

    return {m._meta.label: m for m in apps.get_models() if m._meta.app_label in ("clinic", "hms", "taggit")}


@st.composite
def routes(draw: st.DrawFn) -> tuple[str, tuple[Step, ...]]:
    from hms_otel_agent.instrument.django_orm import _accessors

    models = _models()
    root = draw(st.sampled_from(sorted(models)))
    model = models[root]
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 4))):
        accessors = {
            name: value for name, value in _accessors(model).items() if value[1] in models or not value[1]
        }
        if not accessors:
            break
        name = draw(st.sampled_from(sorted(accessors)))
        kind, target, remote = accessors[name]
        if kind == a.GENERIC_FK:
            target = draw(st.sampled_from(sorted(models)))  # the type an object pointed to
        steps.append(Step(name, kind, target, remote))
        model = models[target]
    if not steps:
        steps.append(Step("pk", a.FORWARD, root))  # rejected below
    return root, tuple(steps)


@pytest.mark.usefixtures("traced")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(routes())
def test_every_derived_fix_compiles_and_joins_only_what_it_can(route: tuple[str, tuple[Step, ...]]) -> None:
    from hms_otel_agent.instrument import fix_check

    root, steps = route
    if steps[0].name == "pk":
        return
    last = steps[-1]
    orm = OrmContext(
        last.model,
        last.kind,
        f"{last.model}.{last.name}",
        True,
        "__".join(s.name for s in steps),
        root,
        facts=FixFacts(route=steps),
    )
    fix = fixes.derive(orm)
    if fix is None:  # no eager load can reach it (e.g. a path on past a GFK of several types)
        return
    assert fix.root == root
    for path in fix.select:  # select_related only along forward FKs and one-to-ones
        names = path.split("__")
        assert [s.name for s in steps[: len(names)]] == names
        assert all(s.kind in SELECTABLE for s in steps[: len(names)]), (path, steps)
    if any(s.kind not in SELECTABLE for s in steps):
        assert fix.prefetch, (fix, steps)
    verdict = fix_check.check(fix)
    assert verdict.ok, (fix.text, steps, verdict.reason)


def test_the_generator_reaches_every_relation_kind(traced: Traced) -> None:
    from hms_otel_agent.instrument.django_orm import _accessors

    kinds = {kind for model in _models().values() for kind, _, _ in _accessors(model).values()}
    assert kinds >= {
        a.FORWARD,
        a.REVERSE_ONE_TO_ONE,
        a.REVERSE_FK,
        a.MANY_TO_MANY,
        a.GENERIC_FK,
        a.GENERIC_RELATION,
    }
