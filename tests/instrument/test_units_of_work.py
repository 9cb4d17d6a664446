"""`unit_of_work` and the implicit units of threads, in-process on the sample app (real PostgreSQL):
the owner spans they make, their findings, and the rules that end an implicit unit."""

from __future__ import annotations

import asyncio
import inspect
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness.traced import Traced
from hypothesis import given, settings
from hypothesis import strategies as st

import hms_otel_agent
from hms_otel_agent.instrument import implicit_units, units


@pytest.fixture
def reminders(traced: Traced) -> Iterator[Any]:
    from hms_otel_agent.sample.hms.jobs import send_reminders

    implicit_units.close_all()
    implicit_units.configure(True, idle_ms=200, max_calls=1000)
    traced.clear()
    yield send_reminders
    implicit_units.close_all()
    implicit_units.configure(True, idle_ms=1000, max_calls=1000)


def work_spans(traced: Traced) -> list[Any]:
    return [s for s in traced.spans() if s.instrumentation_scope.name == units.SCOPE]


def n_plus_one(traced: Traced, span: Any) -> list[dict[str, Any]]:
    return traced.events(span, "hms.n_plus_one")


def test_block_is_an_owner(traced: Traced, reminders: Any) -> None:
    with hms_otel_agent.unit_of_work("nightly-reminders"):
        assert reminders(6) == 6
    (unit,) = work_spans(traced)
    assert unit.name == "nightly-reminders"
    assert unit.parent is None
    assert unit.attributes["hms.work.kind"] == "unit_of_work"
    assert unit.attributes["hms.db.query_count"] == 7
    (event,) = n_plus_one(traced, unit)
    assert event["hms.orm.relation"] == "hms.Appointment.patient"
    assert event["hms.finding.repetitions"] == 6
    assert all(s.parent.span_id == unit.context.span_id for s in traced.children_of(unit))


def test_decorator_makes_one_unit_per_call(traced: Traced, reminders: Any) -> None:
    @hms_otel_agent.unit_of_work()
    def remind(limit: int) -> int:
        return reminders(limit)

    @hms_otel_agent.unit_of_work
    def remind_bare(limit: int) -> int:
        """Documented."""
        return reminders(limit)

    assert remind(2) == 2 and remind(5) == 5 and remind_bare(3) == 3
    assert remind_bare.__doc__ == "Documented." and remind_bare.__name__ == "remind_bare"
    spans = work_spans(traced)
    names = [s.name for s in spans]
    qualname = "test_decorator_makes_one_unit_per_call.<locals>.remind"
    assert names == [f"{__name__}.{qualname}"] * 2 + [f"{__name__}.{qualname}_bare"]
    assert [s.attributes["hms.db.query_count"] for s in spans] == [3, 6, 4]
    assert [len(n_plus_one(traced, s)) for s in spans] == [0, 1, 0]  # threshold 5
    assert spans[0].attributes["code.function.name"] == f"{__name__}.{qualname}"


def test_async_decorator_and_async_with(traced: Traced, reminders: Any) -> None:
    from asgiref.sync import sync_to_async

    @hms_otel_agent.unit_of_work("async reminders")
    async def remind() -> int:
        return await sync_to_async(reminders)(5)

    async def block() -> int:
        async with hms_otel_agent.unit_of_work("async block"):
            return await sync_to_async(reminders)(6)

    assert inspect.iscoroutinefunction(remind)

    async def both() -> list[int]:
        return list(await asyncio.gather(remind(), block()))

    assert asyncio.run(both()) == [5, 6]
    by_name = {s.name: s for s in work_spans(traced)}
    assert set(by_name) == {"async reminders", "async block"}
    assert by_name["async reminders"].attributes["hms.db.query_count"] == 6
    assert by_name["async block"].attributes["hms.db.query_count"] == 7
    assert [e["hms.finding.repetitions"] for e in n_plus_one(traced, by_name["async block"])] == [6]


def test_exceptions_pass_through_and_are_recorded(traced: Traced, reminders: Any) -> None:
    from opentelemetry.trace import StatusCode

    error = ValueError("MRN-1234 not found")
    with pytest.raises(ValueError) as raised, hms_otel_agent.unit_of_work("failing"):
        raise error
    assert raised.value is error
    with pytest.raises(SystemExit), hms_otel_agent.unit_of_work("exits"):
        sys.exit(0)
    failing, exits = work_spans(traced)
    assert failing.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in failing.events] == ["ValueError"]
    assert "MRN-1234" not in str(failing.events[0].attributes)  # messages are not exported
    assert exits.status.status_code is StatusCode.UNSET and not exits.events


def test_one_instance_entered_by_several_threads(traced: Traced, reminders: Any) -> None:
    shared = hms_otel_agent.unit_of_work("shared")
    barrier = threading.Barrier(3)

    def work(limit: int) -> None:
        with shared:
            barrier.wait(timeout=10)
            reminders(limit)

    threads = [threading.Thread(target=work, args=(n,)) for n in (5, 6, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = sorted(s.attributes["hms.db.query_count"] for s in work_spans(traced))
    assert counts == [6, 7, 8]


def test_nested_unit_is_an_owner_of_its_own(traced: Traced, reminders: Any) -> None:
    with hms_otel_agent.unit_of_work("outer"):
        reminders(2)
        with hms_otel_agent.unit_of_work("inner"):
            reminders(5)
    inner, outer = work_spans(traced)
    assert inner.parent.span_id == outer.context.span_id
    assert inner.attributes["hms.db.query_count"] == 6 and len(n_plus_one(traced, inner)) == 1
    assert outer.attributes["hms.db.query_count"] == 3 and not n_plus_one(traced, outer)


def test_without_the_agent_unit_of_work_does_nothing() -> None:
    code = (
        "import sys, hms_otel_agent\n"
        "assert 'opentelemetry' not in sys.modules\n"
        "with hms_otel_agent.unit_of_work('x'):\n"
        "    pass\n"
        "@hms_otel_agent.unit_of_work\n"
        "def f():\n"
        "    return 3\n"
        "print(f())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3\n" and result.stderr == ""


# --- implicit units ---------------------------------------------------------------------------------


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_plain_thread_gets_an_implicit_unit_that_ends_with_it(traced: Traced, reminders: Any) -> None:
    thread = threading.Thread(target=reminders, args=(8,), name="Thread-12 (nightly_sync)")
    thread.start()
    thread.join()
    wait_for(lambda: work_spans(traced))  # ended by the background check: thread gone, idle
    (unit,) = work_spans(traced)
    assert unit.name == "implicit thread nightly_sync"
    assert unit.attributes["hms.work.kind"] == "implicit"
    assert unit.attributes["hms.work.name"] == "implicit thread nightly_sync"
    db = traced.children_of(unit)
    assert len(db) == 9 and unit.attributes["hms.db.query_count"] == 9
    assert unit.end_time == max(s.end_time for s in db)  # at its last call, not when noticed
    (event,) = n_plus_one(traced, unit)
    assert event["hms.finding.repetitions"] == 8
    assert event["code.function.name"] == "send_reminders"


def test_idle_time_splits_units(traced: Traced, reminders: Any) -> None:
    reminders(5)
    time.sleep(0.4)  # idle 200 ms: the first unit is over
    reminders(6)
    implicit_units.close_all()
    first, second = sorted(work_spans(traced), key=lambda s: s.start_time)
    assert first.attributes["hms.db.query_count"] == 6
    assert second.attributes["hms.db.query_count"] == 7
    assert first.end_time < second.start_time
    assert first.name == second.name == f"implicit {implicit_units.entry_point()}"


def test_busy_thread_is_split_by_count(traced: Traced, reminders: Any) -> None:
    implicit_units.configure(True, idle_ms=60_000, max_calls=10)
    reminders(24)  # 25 queries
    implicit_units.close_all()
    counts = [
        s.attributes["hms.db.query_count"] for s in sorted(work_spans(traced), key=lambda s: s.start_time)
    ]
    assert counts == [10, 10, 5]


def test_calls_under_a_span_are_not_implicit(traced: Traced, reminders: Any) -> None:
    with traced.tracer.start_as_current_span("job"):
        reminders(6)
    assert implicit_units.open_units() == 0
    assert not work_spans(traced)
    (job,) = [s for s in traced.spans() if s.name == "job"]
    assert len(n_plus_one(traced, job)) == 1


def test_suppressed_and_disabled(traced: Traced, reminders: Any) -> None:
    token = implicit_units.suppressed.set(True)
    try:
        reminders(6)
    finally:
        implicit_units.suppressed.reset(token)
    implicit_units.configure(False, idle_ms=200, max_calls=1000)
    reminders(6)
    assert implicit_units.open_units() == 0
    assert not work_spans(traced)
    db = [
        s
        for s in traced.spans()
        if "postgresql" in (s.attributes.get("db.system.name"), s.attributes.get("db.system"))
    ]
    assert len(db) == 14 and all(s.parent is None for s in db)


@pytest.mark.parametrize(
    ("thread_name", "unit_name"),
    [
        ("Thread-3 (sync_labs)", "implicit thread sync_labs"),
        ("ThreadPoolExecutor-0_3", "implicit thread ThreadPoolExecutor"),
        ("hl7-listener", "implicit thread hl7-listener"),
        ("worker-12", "implicit thread worker"),
    ],
)
def test_thread_names_stay_few(thread_name: str, unit_name: str) -> None:
    thread = threading.Thread(target=lambda: None, name=thread_name)
    assert implicit_units._name(thread) == unit_name


@settings(max_examples=60, deadline=None)
@given(name=st.one_of(st.text(max_size=400), st.integers(), st.binary(max_size=50), st.none()))
def test_any_name_makes_a_bounded_span_name(name: Any) -> None:
    """Whatever a caller passes as a name, the block runs and its span's name is bounded text."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = units._provider
    units.install(provider)
    try:
        ran = []
        with hms_otel_agent.unit_of_work(name):
            ran.append(True)
        assert ran == [True]
    finally:
        units.install(previous)
    (span,) = exporter.get_finished_spans()
    assert isinstance(span.name, str) and 0 < len(span.name) <= units.MAX_NAME_CHARS
    assert span.attributes["hms.work.name"] == span.name


# --- management commands ------------------------------------------------------------------------


def test_call_command_is_an_owner_and_the_exclusions_hold(traced: Traced, reminders: Any) -> None:
    from django.core.management import call_command

    from hms_otel_agent.instrument import django_commands

    call_command("send_reminders", limit=6, stdout=io.StringIO())
    (command,) = work_spans(traced)
    assert command.name == "command send_reminders"
    assert command.attributes["hms.work.kind"] == "command"
    assert [e["hms.finding.repetitions"] for e in n_plus_one(traced, command)] == [6]
    traced.clear()

    django_commands.install(("send_reminders",))()  # HMS_OTEL_COMMANDS_WITHOUT_SPAN=send_reminders
    try:
        call_command("send_reminders", limit=5, stdout=io.StringIO())
        implicit_units.close_all()
        (unit,) = work_spans(traced)  # its thread's implicit unit groups it instead
        assert unit.attributes["hms.work.kind"] == "implicit"
        assert unit.attributes["hms.db.query_count"] == 6
    finally:
        django_commands.install(())()
    traced.clear()

    call_command("check", stdout=io.StringIO())  # Django's own: neither an owner nor implicit
    call_command("showmigrations", "hms", stdout=io.StringIO())
    implicit_units.close_all()
    assert not work_spans(traced)
    assert [s for s in traced.spans() if s.parent is None and s.kind.name == "CLIENT"]
