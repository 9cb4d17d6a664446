"""Work outside requests, under hms-otel-run, read from an OTLP receiver: a management command, a
Celery task through a real broker, an RQ job, a unit_of_work block, a plain script and a plain
thread each get an owner span carrying their N+1 finding with its location and fix."""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, run, venv_executable
from harness.services import create_database, drop_database, new_database_name

from .conftest import MANAGE, otlp_env

pytestmark = pytest.mark.e2e

JOBS_FILE = "hms_otel_agent/sample/hms/jobs.py"
REMINDER_LINE = 22  # `patient = appointment.patient` in jobs.send_reminders


def hms_run(*cmd: str) -> list[str]:
    return [venv_executable("hms-otel-run"), "--", *cmd]


def n_plus_one_events(span: ReceivedSpan) -> list[dict[str, object]]:
    return [dict(e.attributes) for e in span.events if e.name == "hms.n_plus_one"]


def assert_reminder_n_plus_one(span: ReceivedSpan, repetitions: int) -> None:
    (event,) = n_plus_one_events(span)
    assert event["hms.orm.relation"] == "hms.Appointment.patient"
    assert event["hms.finding.repetitions"] == repetitions
    assert event["code.file.path"] == JOBS_FILE
    assert event["code.line.number"] == REMINDER_LINE
    assert event["code.function.name"] == "send_reminders"
    assert event["hms.hint.fix"] == ".select_related('patient')"
    assert span.attributes["hms.n_plus_one"] is True
    assert span.attributes["hms.db.query_count"] == repetitions + 1


def owned_db_spans(receiver: OtlpReceiver, owner: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in receiver.children_of(owner) if is_postgresql(s)]


def is_postgresql(span: ReceivedSpan) -> bool:
    """A PostgreSQL span, in the stable database conventions or the old ones."""
    return span.attributes.get("db.system.name", span.attributes.get("db.system")) == "postgresql"


def test_management_command_is_an_owner(otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]) -> None:
    env = {**sample_app_db, **otlp_env(otlp_receiver, "http/protobuf")}
    result = run(hms_run(*MANAGE, "send_reminders", "--limit", "7"), env=env, timeout=120, check=True)
    assert "7 reminders" in result.stdout
    (command,) = otlp_receiver.wait_for_spans(lambda s: s.name == "command send_reminders", timeout=20)
    assert command.attributes["hms.work.kind"] == "command"
    assert command.attributes["hms.work.name"] == "send_reminders"
    assert command.is_root
    assert_reminder_n_plus_one(command, 7)
    otlp_receiver.wait_for_spans(lambda s: s.parent_span_id == command.span_id, count=8)
    assert len(owned_db_spans(otlp_receiver, command)) == 8
    # The live log names the owner and the line.
    assert "command send_reminders: Appointment.patient loaded lazily 7x" in result.stderr
    assert f"at {JOBS_FILE}:{REMINDER_LINE} in send_reminders" in result.stderr


def test_optimized_command_has_no_finding(otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]) -> None:
    env = {**sample_app_db, **otlp_env(otlp_receiver, "http/protobuf")}
    run(hms_run(*MANAGE, "send_reminders", "--limit", "7", "--optimized"), env=env, timeout=120, check=True)
    (command,) = otlp_receiver.wait_for_spans(lambda s: s.name == "command send_reminders", timeout=20)
    assert "hms.n_plus_one" not in command.attributes
    assert command.attributes["hms.db.query_count"] == 1


def test_failing_command_span_records_the_error(
    otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]
) -> None:
    env = {**sample_app_db, **otlp_env(otlp_receiver, "http/protobuf")}
    result = run(hms_run(*MANAGE, "seed_hms", "--patients", "-3"), env=env, timeout=120)
    assert result.returncode != 0
    (command,) = otlp_receiver.wait_for_spans(lambda s: s.name == "command seed_hms", timeout=20)
    assert command.status_code == "STATUS_CODE_ERROR"
    assert [e.attributes["exception.type"] for e in command.events if e.name == "exception"] == [
        "django.core.management.base.CommandError"
    ]


def test_djangos_own_commands_are_not_owners(
    otlp_receiver: OtlpReceiver, pg_server_url: str, sample_app_db: dict[str, str]
) -> None:
    """migrate loops over migrations and permissions with a query each: Django's loops, not the
    application's, so no finding, and its queries join no implicit unit either."""
    name = new_database_name() + "_migrate"
    url = create_database(pg_server_url, name)
    try:
        env = {**sample_app_db, "DATABASE_URL": url, **otlp_env(otlp_receiver, "http/protobuf")}
        result = run(hms_run(*MANAGE, "migrate", "--noinput", "-v", "0"), env=env, timeout=300, check=True)
        assert "n plus one" not in result.stderr
        queries = otlp_receiver.wait_for_spans(is_postgresql, count=100)
        assert all(s.is_root for s in queries)
        assert not [s for s in otlp_receiver.spans() if "hms.work.kind" in s.attributes]
    finally:
        drop_database(pg_server_url, name)


SCRIPT = """
import os, sys, threading
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")
import django
django.setup()
import hms_otel_agent
from hms_otel_agent.sample.hms.jobs import send_reminders

mode = sys.argv[1]
if mode == "script":
    send_reminders(6)
elif mode == "thread":
    worker = threading.Thread(target=send_reminders, args=(9,), name="Thread-7 (send_reminders)")
    worker.start()
    worker.join()
elif mode == "unit":
    with hms_otel_agent.unit_of_work("nightly-reminders"):
        send_reminders(5)
elif mode == "decorated":
    import asyncio
    from asgiref.sync import sync_to_async

    @hms_otel_agent.unit_of_work
    async def remind():
        return await sync_to_async(send_reminders)(8)

    asyncio.run(remind())
print("done", mode)
"""


@pytest.mark.parametrize(
    ("mode", "name", "kind", "repetitions"),
    [
        ("script", "implicit reminders.py", "implicit", 6),
        ("thread", "implicit thread send_reminders", "implicit", 9),
        ("unit", "nightly-reminders", "unit_of_work", 5),
        ("decorated", "remind", "unit_of_work", 8),
    ],
)
def test_scripts_threads_and_units_are_owners(
    mode: str,
    name: str,
    kind: str,
    repetitions: int,
    tmp_path: Path,
    otlp_receiver: OtlpReceiver,
    sample_app_db: dict[str, str],
) -> None:
    script = tmp_path / "reminders.py"
    script.write_text(SCRIPT)
    env = {**sample_app_db, **otlp_env(otlp_receiver, "http/protobuf")}
    result = run(hms_run(sys.executable, str(script), mode), env=env, timeout=120, check=True, cwd=tmp_path)
    assert f"done {mode}" in result.stdout
    (owner,) = otlp_receiver.wait_for_spans(lambda s: n_plus_one_events(s) != [], timeout=20)
    assert owner.name == name
    assert owner.attributes["hms.work.kind"] == kind
    assert_reminder_n_plus_one(owner, repetitions)
    assert f"{name}: Appointment.patient loaded lazily {repetitions}x" in result.stderr
    if mode == "decorated":
        assert owner.attributes["code.function.name"] == "remind"
        # The queries ran on sync_to_async's thread: still under the unit.
        assert len(owned_db_spans(otlp_receiver, owner)) == repetitions + 1
    if kind == "implicit":
        # The unit spans its calls, not the idle time after them.
        db = owned_db_spans(otlp_receiver, owner)
        assert len(db) == repetitions + 1
        assert owner.end_time_unix_nano == max(s.end_time_unix_nano for s in db)
        assert owner.start_time_unix_nano <= min(s.start_time_unix_nano for s in db)


def test_report_at_exit_and_analyze_see_the_units(tmp_path: Path, sample_app_db: dict[str, str]) -> None:
    """Embedded default: the run's report lists the command's finding, and `analyze` finds it
    again offline from the local files."""
    command = hms_run(*MANAGE, "send_reminders", "--limit", "6")
    result = run(command, env=sample_app_db, cwd=tmp_path, check=True)
    assert "command send_reminders" in result.stderr
    assert "hms.Appointment.patient" in result.stderr
    analyzed = run(
        [venv_executable("hms-otel"), "analyze", "--format", "json", str(tmp_path / ".hms-otel")],
        cwd=tmp_path,
        check=True,
    )
    import json

    report = json.loads(analyzed.stdout)
    (finding,) = [f for f in report["findings"] if f["kind"] == "n_plus_one"]
    assert finding["route"] == "command send_reminders"
    assert finding["relation"] == "hms.Appointment.patient"
    assert finding["location"] == {"file": JOBS_FILE, "line": REMINDER_LINE, "function": "send_reminders"}


# --- Celery ------------------------------------------------------------------------------------------


def celery_worker(
    app_process: Callable[..., AppProcess], env: dict[str, str], queue: str, pool: str
) -> AppProcess:
    extra = ["--max-tasks-per-child", "1"] if pool == "prefork-recycled" else []
    cmd = [
        *("celery", "-A", "hms_otel_agent.sample.tasks", "worker", "-P", pool.split("-")[0], "-c", "1"),
        *("-Q", queue, "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"),
        *extra,
    ]
    return app_process(hms_run(*cmd), env=env, name=f"celery-{pool}")


PUBLISH = """
import sys
from hms_otel_agent.sample.tasks import send_reminders
import hms_otel_agent
with hms_otel_agent.unit_of_work("publish reminders"):
    send_reminders.apply_async(kwargs={"limit": 6}, queue=sys.argv[1])
print("published")
"""


def check_celery_task(receiver: OtlpReceiver) -> None:
    (task,) = receiver.wait_for_spans(lambda s: s.name == "run/hms.send_reminders", timeout=60)
    assert task.kind == "SPAN_KIND_CONSUMER"
    assert_reminder_n_plus_one(task, 6)
    assert len(owned_db_spans(receiver, task)) == 7
    # The publishing side: the task's trace continues the publisher's.
    (publish,) = receiver.wait_for_spans(lambda s: s.name == "apply_async/hms.send_reminders", timeout=20)
    assert publish.kind == "SPAN_KIND_PRODUCER"
    assert task.trace_id == publish.trace_id and task.parent_span_id == publish.span_id
    (unit,) = receiver.spans("publish reminders")
    assert publish.parent_span_id == unit.span_id


# prefork-recycled: the pool process that ran the task exits right after it (its spans are
# flushed on worker_process_shutdown).
@pytest.mark.parametrize("pool", ["prefork", "prefork-recycled", "solo"])
def test_celery_task_through_redis_broker(
    pool: str,
    tmp_path: Path,
    otlp_receiver: OtlpReceiver,
    sample_app_db: dict[str, str],
    app_process: Callable[..., AppProcess],
) -> None:
    queue = f"hms-test-{uuid.uuid4().hex[:8]}"
    env = {
        **sample_app_db,
        **otlp_env(otlp_receiver, "http/protobuf"),
        "CELERY_BROKER_URL": sample_app_db["REDIS_URL"],
    }
    worker = celery_worker(app_process, env, queue, pool)
    script = tmp_path / "publish.py"
    script.write_text(PUBLISH)
    run(hms_run(sys.executable, str(script), queue), env=env, timeout=60, check=True)
    check_celery_task(otlp_receiver)
    worker.stop()
    assert "Appointment.patient loaded lazily 6x" in worker.stderr
    # The broker's own Redis traffic (kombu) finds nothing: the task is the one owner with findings.
    with_findings = [s.name for s in otlp_receiver.spans() if s.attributes.get("hms.findings.count")]
    assert with_findings == ["run/hms.send_reminders"]


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    not _rabbitmq_reachable(), reason="no RabbitMQ on 127.0.0.1:5672 (the Redis broker test runs)"
)
def test_celery_task_through_rabbitmq(
    tmp_path: Path,
    otlp_receiver: OtlpReceiver,
    sample_app_db: dict[str, str],
    app_process: Callable[..., AppProcess],
) -> None:
    queue = f"hms-test-{uuid.uuid4().hex[:8]}"
    env = {
        **sample_app_db,
        **otlp_env(otlp_receiver, "http/protobuf"),
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
    }
    worker = celery_worker(app_process, env, queue, "prefork")
    script = tmp_path / "publish.py"
    script.write_text(PUBLISH)
    run(hms_run(sys.executable, str(script), queue), env=env, timeout=60, check=True)
    check_celery_task(otlp_receiver)
    worker.stop()


# --- RQ ----------------------------------------------------------------------------------------------

ENQUEUE = """
import os, sys
from redis import Redis
from rq import Queue
import hms_otel_agent
queue = Queue(sys.argv[1], connection=Redis.from_url(os.environ["REDIS_URL"]))
with hms_otel_agent.unit_of_work("enqueue reminders"):
    queue.enqueue("hms_otel_agent.sample.hms.jobs.send_reminders", 5)
print("enqueued")
"""

RQ_WORKER = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")
import django
django.setup()
from redis import Redis
from rq import Queue, SimpleWorker, Worker
connection = Redis.from_url(os.environ["REDIS_URL"])
worker_class = SimpleWorker if sys.argv[2] == "simple" else Worker
worker_class([Queue(sys.argv[1], connection=connection)], connection=connection).work(burst=True)
print("worked")
"""


@pytest.mark.parametrize("worker_class", ["forking", "simple"])
def test_rq_job_is_an_owner(
    worker_class: str, tmp_path: Path, otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]
) -> None:
    queue = f"hms-test-{uuid.uuid4().hex[:8]}"
    env = {**sample_app_db, **otlp_env(otlp_receiver, "http/protobuf")}
    (tmp_path / "enqueue.py").write_text(ENQUEUE)
    (tmp_path / "worker.py").write_text(RQ_WORKER)
    run(hms_run(sys.executable, str(tmp_path / "enqueue.py"), queue), env=env, timeout=60, check=True)
    command = hms_run(sys.executable, str(tmp_path / "worker.py"), queue, worker_class)
    worker = run(command, env=env, timeout=120, check=True)
    assert "worked" in worker.stdout
    (job,) = otlp_receiver.wait_for_spans(
        lambda s: s.name == "rq.job hms_otel_agent.sample.hms.jobs.send_reminders", timeout=30
    )
    assert job.kind == "SPAN_KIND_CONSUMER"
    assert job.attributes["hms.work.kind"] == "job"
    assert job.attributes["messaging.system"] == "rq"
    assert job.attributes["messaging.destination.name"] == queue
    assert_reminder_n_plus_one(job, 5)
    (enqueue,) = otlp_receiver.spans("rq.enqueue hms_otel_agent.sample.hms.jobs.send_reminders")
    assert enqueue.kind == "SPAN_KIND_PRODUCER"
    assert job.trace_id == enqueue.trace_id and job.parent_span_id == enqueue.span_id
    assert job.attributes["messaging.message.id"] == enqueue.attributes["messaging.message.id"]
    assert "Appointment.patient loaded lazily 5x" in worker.stderr
