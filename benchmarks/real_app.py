"""The agent on a large real Django application: NetBox (many models, DRF, django-filter, django-tables2,
custom querysets, deep stacks), with no agent, ``opentelemetry-instrument`` and ``hms-otel-run``.

The application's code is not part of this repository: point ``--checkout`` at a NetBox source tree
(measured: tag ``v4.4.10``, the last release that runs on Python 3.10/3.11, Django 5.2), e.g.
``git clone --depth 1 --branch v4.4.10 https://github.com/netbox-community/netbox``.

``python benchmarks/real_app.py setup --checkout DIR``
    creates a venv (``--venv``, default ``DIR/.venv-bench``) with NetBox's requirements (psycopg's
    binary build instead of the C one), this agent (editable), py-spy and pyinstrument; writes
    ``netbox/netbox/configuration.py`` (PostgreSQL and Redis from ``--database-url`` /
    ``--redis-url``; anonymous read access so that the load generator needs no login), creates the
    database, migrates and seeds it (sites, racks, device types, 300 devices with 24 interfaces each,
    IP addresses, prefixes, VLANs, tags: the objects the pages below list).
``python benchmarks/real_app.py bench --checkout DIR``
    gunicorn with 2 sync workers and NetBox's settings in each mode (``none``, ``otel``: the plain SDK
    exactly as in ``run.py``, OTLP/HTTP to the sink; ``hms``: ``hms-otel-run`` with its defaults,
    i.e. the local-file exporter; ``hms-http``: OTLP/HTTP to the sink), interleaved rounds of serial
    requests per page; latency, the workers' CPU per request, and the SQL statements and Redis
    commands per request (counted from the otel mode's spans). The extra CPU per SQL statement is
    (CPU per request under the agent - without) / statements per request.
``python benchmarks/real_app.py profile --checkout DIR``
    the same pages in-process (``peers_worker.py``: Django's WSGI application called directly) under
    each mode, timed, then under cProfile (and pyinstrument with ``--pyinstrument``) in the hms mode:
    where the agent's time per statement goes, by function. Profiles land in ``--out``.

Numbers: ``benchmarks/results/real_app_<date>.json``; see "The agent on a large real application" in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402

log = run.log
PAGES = {
    "api_devices": "/api/dcim/devices/?limit=50",
    "api_interfaces": "/api/dcim/interfaces/?limit=50",
    "api_ip_addresses": "/api/ipam/ip-addresses/?limit=50",
    "ui_devices": "/dcim/devices/",
    "ui_device": "/dcim/devices/{device}/",
    "ui_interfaces": "/dcim/interfaces/",
}
MODES = ("none", "otel", "hms", "hms-http")

CONFIGURATION = """\
# Written by hms-otel-agent's benchmarks/real_app.py setup: a benchmark installation.
ALLOWED_HOSTS = ['*']
DATABASES = {{'default': {{
    'ENGINE': 'django.db.backends.postgresql', 'NAME': {db_name!r}, 'USER': {db_user!r},
    'PASSWORD': {db_password!r}, 'HOST': {db_host!r}, 'PORT': {db_port!r}, 'CONN_MAX_AGE': 300,
}}}}
REDIS = {{
    'tasks': {{'HOST': {redis_host!r}, 'PORT': {redis_port}, 'USERNAME': '', 'PASSWORD': '',
              'DATABASE': {redis_db_tasks}, 'SSL': False}},
    'caching': {{'HOST': {redis_host!r}, 'PORT': {redis_port}, 'USERNAME': '', 'PASSWORD': '',
                'DATABASE': {redis_db_cache}, 'SSL': False}},
}}
SECRET_KEY = 'hms-bench-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyzABCDEF'
# Anonymous read access: the load generator sends plain GETs.
LOGIN_REQUIRED = False
EXEMPT_VIEW_PERMISSIONS = ['*']
"""

SEED = """
import random
from django.contrib.contenttypes.models import ContentType
from dcim.models import *
from ipam.models import *
from extras.models import Tag
from tenancy.models import Tenant
from netaddr import IPNetwork

if Device.objects.exists():
    raise SystemExit(0)
rnd = random.Random(7)
tags = [Tag.objects.create(name=f'tag-{i}', slug=f'tag-{i}') for i in range(5)]
tenants = [Tenant.objects.create(name=f'Tenant {i}', slug=f'tenant-{i}') for i in range(5)]
region = Region.objects.create(name='Region', slug='region')
sites = [Site.objects.create(name=f'Site {i}', slug=f'site-{i}', region=region, tenant=rnd.choice(tenants))
         for i in range(10)]
racks = [Rack.objects.create(name=f'R{i}', site=s) for s in sites for i in range(3)]
makers = [Manufacturer.objects.create(name=f'Maker {i}', slug=f'maker-{i}') for i in range(3)]
types = [DeviceType.objects.create(manufacturer=rnd.choice(makers), model=f'Model {i}', slug=f'model-{i}')
         for i in range(8)]
roles = [DeviceRole.objects.create(name=f'Role {i}', slug=f'role-{i}') for i in range(4)]
platform = Platform.objects.create(name='Platform', slug='platform')
rir = RIR.objects.create(name='RIR', slug='rir')
vlans = [VLAN.objects.create(vid=100 + i, name=f'vlan{i}', site=rnd.choice(sites)) for i in range(40)]
for i in range(60):
    Prefix.objects.create(prefix=IPNetwork(f'10.{i}.0.0/16'), scope=rnd.choice(sites),
                          vlan=rnd.choice(vlans), tenant=rnd.choice(tenants))
devices = []
for i in range(300):
    rack = rnd.choice(racks)
    d = Device(name=f'dev-{i:04d}', device_type=rnd.choice(types), role=rnd.choice(roles),
               site=rack.site, rack=rack, tenant=rnd.choice(tenants), platform=platform, status='active')
    d.save()
    d.tags.set(rnd.sample(tags, 2))
    devices.append(d)
interfaces = []
for d in devices:
    for n in range(24):
        interfaces.append(Interface(device=d, name=f'eth{n}', type='1000base-t', enabled=True,
                                    mtu=1500, description=f'port {n}'))
Interface.objects.bulk_create(interfaces, batch_size=1000)
ct = ContentType.objects.get_for_model(Interface)
ips = []
for n, iface in enumerate(Interface.objects.order_by('pk')[:2000]):
    ips.append(IPAddress(address=IPNetwork(f'10.{n // 250}.{n % 250}.1/24'), assigned_object_type=ct,
                         assigned_object_id=iface.pk, status='active', tenant=rnd.choice(tenants)))
IPAddress.objects.bulk_create(ips, batch_size=1000)
print('seeded', Device.objects.count(), 'devices', Interface.objects.count(), 'interfaces',
      IPAddress.objects.count(), 'addresses')
"""


# --- setup -----------------------------------------------------------------------------------------


def app_dir(checkout: Path) -> Path:
    return checkout / "netbox"


def venv_python(args: argparse.Namespace) -> Path:
    return Path(args.venv or Path(args.checkout) / ".venv-bench") / "bin" / "python"


def setup(args: argparse.Namespace) -> None:
    checkout = Path(args.checkout).resolve()
    python = venv_python(args)
    if not python.exists():
        log(f"creating {python.parent.parent}")
        subprocess.run([sys.executable, "-m", "venv", str(python.parent.parent)], check=True)
        requirements = [
            line.replace("psycopg[c,pool]", "psycopg[binary,pool]")
            for line in (checkout / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.lower().startswith(("mkdocs", "zensical"))
        ]
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                *requirements,
                "-e",
                str(ROOT),
                "py-spy",
                "pyinstrument",
            ],
            check=True,
        )
    # Some snapshots of the repository lack this large data file (a choice set nothing here reads).
    locode = app_dir(checkout) / "extras" / "data" / "un_locode.py"
    if not locode.exists():
        locode.write_text("UN_LOCODE = ()\n")
    db = urlsplit(args.database_url)
    redis = urlsplit(args.redis_url)
    redis_db = int(redis.path.lstrip("/") or 0)
    (app_dir(checkout) / "netbox" / "configuration.py").write_text(
        CONFIGURATION.format(
            db_name=args.db_name,
            db_user=db.username or "postgres",
            db_password=db.password or "",
            db_host=db.hostname or "127.0.0.1",
            db_port=str(db.port or 5432),
            redis_host=redis.hostname or "127.0.0.1",
            redis_port=redis.port or 6379,
            redis_db_tasks=redis_db,
            redis_db_cache=redis_db + 1,
        )
    )
    import psycopg
    from psycopg import sql

    with psycopg.connect(args.database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.db_name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db_name)))
    manage = [str(python), "manage.py"]
    for command in (["migrate", "--no-input", "-v", "0"], ["shell", "--no-startup", "-c", SEED]):
        log(" ".join(command[:2]))
        subprocess.run([*manage, *command], cwd=app_dir(checkout), check=True)


# --- modes -----------------------------------------------------------------------------------------


def mode_env(
    mode: str, sink: run.Sink | None, local_dir: Path, bin_dir: Path
) -> tuple[list[str], dict[str, str]]:
    env: dict[str, str] = {"DJANGO_SETTINGS_MODULE": "netbox.settings", "HMS_PEERS_FLUSH": "otel"}
    if mode == "none":
        return [], env
    env["OTEL_SERVICE_NAME"] = f"netbox-{mode}"
    if mode in ("otel", "hms-http"):
        assert sink is not None
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint(mode),
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_LOGS_EXPORTER": "none",
            }
        )
    if mode == "otel":
        python = bin_dir / "python"
        names = subprocess.run(
            [
                str(python),
                "-c",
                "from importlib.metadata import entry_points;"
                "print(','.join(sorted({e.name for e in entry_points(group='opentelemetry_instrumentor')})))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        disabled = [n for n in names.split(",") if n and n not in run.WANTED_INSTRUMENTATIONS]
        env.update(
            {
                "OTEL_PYTHON_DISTRO": run.BASELINE_SDK_NAME,
                "OTEL_PYTHON_CONFIGURATOR": run.BASELINE_SDK_NAME,
                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(disabled),
                "PYTHONPATH": str(run.BASELINE_SDK_DIR),
            }
        )
        return [str(bin_dir / "opentelemetry-instrument")], env
    if mode == "hms":
        env["HMS_OTEL_LOCAL_DIR"] = str(local_dir / "hms-local")
    return [str(bin_dir / "hms-otel-run"), "--"], env


def clean_env(extra: dict[str, str], bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HMS_OTEL_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env.update(extra)
    return env


class Gunicorn:
    def __init__(
        self, mode: str, launcher: list[str], env: dict[str, str], cwd: Path, log_dir: Path, workers: int
    ):
        self.mode = mode
        self.port = run.free_port()
        self.err = log_dir / f"{mode}.stderr"
        bin_dir = Path(env["PATH"].split(os.pathsep)[0])
        command = [
            *launcher,
            str(bin_dir / "gunicorn"),
            "netbox.wsgi:application",
            *("--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning"),
            # NetBox builds its GraphQL schema on the first request: minutes on a busy 2-core machine.
            *("--timeout", "600"),
        ]
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{mode}: gunicorn exited:\n{self.err.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                status, _ = loadgen.get("127.0.0.1", self.port, "/api/status/", timeout=30)
                if status == 200 and len(run.children_of(self.proc.pid)) >= workers:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{mode}: no answer in 180 s:\n{self.err.read_text()[-3000:]}")
            time.sleep(0.5)

    def cpu(self) -> float:
        total = 0.0
        for pid in run.children_of(self.proc.pid):
            with contextlib.suppress(OSError):
                total += run.proc_cpu_seconds(pid)
        return total

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def first_device(args: argparse.Namespace) -> int:
    import psycopg

    url = run.with_database(args.database_url, args.db_name)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT min(id) FROM dcim_device").fetchone()
    return int(row[0]) if row and row[0] else 1


def count_statements(
    sink: run.Sink, server: Gunicorn, paths: dict[str, str], n: int
) -> dict[str, dict[str, float]]:
    """SQL statements, Redis commands and spans per request of each page, from the otel mode's spans."""
    out = {}
    sink.inspect(True)
    try:
        for page, path in paths.items():
            before = sink.stats()["otel"]
            for _ in range(n):
                loadgen.get("127.0.0.1", server.port, path)
            run.settle(sink, "otel", 500)
            after = sink.stats()["otel"]
            scopes = {k: after["scopes"].get(k, 0) - before["scopes"].get(k, 0) for k in after["scopes"]}
            out[page] = {
                "sql": round(
                    (
                        scopes.get("opentelemetry.instrumentation.psycopg", 0)
                        + scopes.get("opentelemetry.instrumentation.psycopg2", 0)
                    )
                    / n,
                    1,
                ),
                "redis": round(scopes.get("opentelemetry.instrumentation.redis", 0) / n, 1),
                "spans": round((after["spans"] - before["spans"]) / n, 1),
            }
    finally:
        sink.inspect(False)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    checkout = Path(args.checkout).resolve()
    bin_dir = venv_python(args).parent
    log_dir = Path(tempfile.mkdtemp(prefix="hms-realapp-"))
    device = first_device(args)
    paths = {p: PAGES[p].format(device=device) for p in args.pages}
    modes = args.modes
    sink = run.Sink([m for m in modes if m in ("otel", "hms-http")], log_dir)
    servers: dict[str, Gunicorn] = {}
    results: dict[str, Any] = {"paths": paths, "modes": {}, "pages": {}}
    try:
        for mode in modes:
            launcher, extra = mode_env(mode, sink, log_dir, bin_dir)
            servers[mode] = Gunicorn(mode, launcher, clean_env(extra, bin_dir), app_dir(checkout), log_dir, 2)
            results["modes"][mode] = {"launcher": launcher, "env": extra}
            log(f"{mode}: gunicorn on {servers[mode].port}")
        for server in servers.values():
            for path in paths.values():
                loadgen.serial("127.0.0.1", server.port, lambda i, p=path: p, 10, 30)
        if "otel" in servers:
            results["counts"] = count_statements(sink, servers["otel"], paths, 5)
            log(f"statements per request: {results['counts']}")
        phases = []
        for round_ in range(args.rounds):
            for index, (page, path) in enumerate(paths.items()):
                shift = (round_ + index) % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    server = servers[mode]
                    cpu0 = server.cpu()
                    result = loadgen.serial(
                        "127.0.0.1", server.port, lambda i, p=path: p, args.requests, 10**6
                    )
                    if mode in ("otel", "hms-http"):
                        run.settle(sink, mode, 500)
                    else:
                        time.sleep(0.6)
                    phases.append(
                        {
                            "round": round_,
                            "page": page,
                            "mode": mode,
                            "latencies_ms": [ns / 1e6 for ns in result.latencies_ns],
                            "cpu_s": server.cpu() - cpu0,
                            "requests": result.requests,
                            "errors": result.errors,
                        }
                    )
            log(f"round {round_ + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})")
        for page in paths:
            by_mode = {}
            for mode in modes:
                mine = [p for p in phases if p["page"] == page and p["mode"] == mode]
                lat = [x for p in mine for x in p["latencies_ms"]]
                requests = sum(p["requests"] for p in mine)
                by_mode[mode] = {
                    "latency_ms_p50": round(statistics.median(lat), 3) if lat else None,
                    "cpu_ms_per_request": round(sum(p["cpu_s"] for p in mine) / requests * 1e3, 3)
                    if requests
                    else None,
                    "requests": requests,
                    "errors": sum(p["errors"] for p in mine),
                    "cpu_ms_per_round": [round(p["cpu_s"] / max(p["requests"], 1) * 1e3, 3) for p in mine],
                }
            base = by_mode.get("none")
            sql = results.get("counts", {}).get(page, {}).get("sql")
            for mode, entry in by_mode.items():
                if base and mode != "none":
                    entry["latency_ratio"] = run.ratio(entry["latency_ms_p50"], base["latency_ms_p50"])
                    entry["cpu_ratio"] = run.ratio(entry["cpu_ms_per_request"], base["cpu_ms_per_request"])
                    if sql:
                        entry["extra_cpu_ms_per_sql"] = round(
                            (entry["cpu_ms_per_request"] - base["cpu_ms_per_request"]) / sql, 4
                        )
                        entry["extra_latency_ms_per_sql"] = round(
                            (entry["latency_ms_p50"] - base["latency_ms_p50"]) / sql, 4
                        )
            results["pages"][page] = by_mode
        results["sink"] = sink.stats()
    finally:
        for server in servers.values():
            server.stop()
        sink.stop()
        if not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            log(f"logs in {log_dir}")
    return results


# --- in-process profile -------------------------------------------------------------------------------


class InProcess:
    """``peers_worker.py`` under a mode's launcher, in the NetBox venv."""

    def __init__(
        self, mode: str, launcher: list[str], env: dict[str, str], cwd: Path, python: Path, log_dir: Path
    ):
        listener = socket.create_server(("127.0.0.1", 0))
        env = {**env, "HMS_PEERS_CONTROL": str(listener.getsockname()[1]), "HMS_PEERS_MODE": mode}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(cwd)) if p)
        self.err = log_dir / f"inproc-{mode}.stderr"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*launcher, str(python), str(HERE / "peers_worker.py")],
                env=env,
                cwd=cwd,
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        listener.settimeout(180)
        conn, _ = listener.accept()
        conn.settimeout(None)
        self.reader = conn.makefile("r", encoding="utf-8")
        self.writer = conn.makefile("w", encoding="utf-8")
        self.reader.readline()

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(json.dumps(command) + "\n")
        self.writer.flush()
        line = self.reader.readline()
        if not line:
            raise RuntimeError(self.err.read_text()[-3000:])
        return dict(json.loads(line))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write('{"cmd": "quit"}\n')
            self.writer.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


AGENT_PREFIX = str(ROOT / "hms_otel_agent")


def agent_functions(stats_file: Path, requests: int, statements: float | None) -> list[dict[str, Any]]:
    """The agent's functions by inclusive time (cProfile ``cumtime``) per request and per statement."""
    stats = pstats.Stats(str(stats_file))
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not filename.startswith(AGENT_PREFIX):
            continue
        rows.append(
            {
                "function": f"{filename[len(str(ROOT)) + 1 :]}:{line} {name}",
                "calls_per_request": round(calls / requests, 1),
                "self_us_per_request": round(tottime / requests * 1e6, 1),
                "cum_us_per_request": round(cumtime / requests * 1e6, 1),
                "cum_us_per_sql": round(cumtime / requests * 1e6 / statements, 2) if statements else None,
            }
        )
    rows.sort(key=lambda r: -r["cum_us_per_request"])
    return rows[:40]


# Self time of the telemetry on the request thread, by layer: (label, path fragment, functions or None).
LAYERS = (
    ("agent: DB span hooks (instrument/db.py, attribute writes)", "hms_otel_agent/instrument/db.py", None),
    (
        "agent: DB span hooks (instrument/db.py, attribute writes)",
        "hms_otel_agent/instrument/context.py",
        {"set_attributes", "code_attributes"},
    ),
    ("agent: code location (context.user_location)", "hms_otel_agent/instrument/context.py", None),
    ("agent: ORM context (instrument/django_orm.py)", "hms_otel_agent/instrument/django_orm.py", None),
    ("agent: ORM context (instrument/django_orm.py)", "hms_otel_agent/instrument/eager_loads.py", None),
    ("agent: SQL fingerprint and masking (signals/)", "hms_otel_agent/signals/fingerprint.py", None),
    ("agent: SQL fingerprint and masking (signals/)", "hms_otel_agent/signals/sql_mask.py", None),
    ("agent: SQL fingerprint and masking (signals/)", "hms_otel_agent/signals/sql_lexer.py", None),
    (
        "agent: span processor, detectors, metrics (processors.py, pipeline.py, signals/)",
        "hms_otel_agent/processors.py",
        None,
    ),
    (
        "agent: span processor, detectors, metrics (processors.py, pipeline.py, signals/)",
        "hms_otel_agent/pipeline.py",
        None,
    ),
    (
        "agent: span processor, detectors, metrics (processors.py, pipeline.py, signals/)",
        "hms_otel_agent/signals/",
        None,
    ),
    ("agent: cache and Redis hooks", "hms_otel_agent/instrument/", None),
    ("agent: other", "hms_otel_agent/", None),
    ("OpenTelemetry metrics SDK", "opentelemetry/sdk/metrics", None),
    ("OpenTelemetry SDK / API (spans, context, attributes)", "opentelemetry/sdk", None),
    ("OpenTelemetry SDK / API (spans, context, attributes)", "opentelemetry/trace", None),
    ("OpenTelemetry SDK / API (spans, context, attributes)", "opentelemetry/context", None),
    ("OpenTelemetry SDK / API (spans, context, attributes)", "opentelemetry/attributes", None),
    ("OpenTelemetry SDK / API (spans, context, attributes)", "opentelemetry/util", None),
    (
        "OpenTelemetry contrib (Django middleware, psycopg, redis, semconv)",
        "opentelemetry/instrumentation",
        None,
    ),
    ("wrapt", "/wrapt/", None),
)


def layers(stats_file: Path) -> dict[str, float]:
    """Shares of the request thread's profiled time by layer (cProfile self time)."""
    stats = pstats.Stats(str(stats_file))
    out: dict[str, float] = {}
    total = 0.0
    for (filename, _line, name), (_cc, _calls, tottime, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        label = "application, Django, libraries"
        for title, fragment, functions in LAYERS:
            if fragment in filename and (functions is None or name in functions):
                label = title
                break
        out[label] = out.get(label, 0.0) + tottime
    return {k: round(v / total, 5) for k, v in sorted(out.items(), key=lambda kv: -kv[1])} if total else {}


def profile(args: argparse.Namespace) -> dict[str, Any]:
    checkout = Path(args.checkout).resolve()
    python = venv_python(args)
    bin_dir = python.parent
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="hms-realapp-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    device = first_device(args)
    paths = {p: PAGES[p].format(device=device) for p in args.pages}
    sink = run.Sink(["otel", "hms-http"], out_dir)
    workers: dict[str, InProcess] = {}
    results: dict[str, Any] = {"paths": paths, "timing": {}, "profiles": {}}
    try:
        for mode in args.modes:
            launcher, extra = mode_env(mode, sink, out_dir, bin_dir)
            workers[mode] = InProcess(
                mode, launcher, clean_env(extra, bin_dir), app_dir(checkout), python, out_dir
            )
            log(f"in-process {mode} started")
        for worker in workers.values():
            for path in paths.values():
                worker.call({"cmd": "run", "path": path, "n": 10})
        timing: dict[str, dict[str, list[dict[str, float]]]] = {p: {m: [] for m in workers} for p in paths}
        for round_ in range(args.rounds):
            for index, (page, path) in enumerate(paths.items()):
                order = list(workers)
                shift = (round_ + index) % len(order)
                for mode in order[shift:] + order[:shift]:
                    answer = workers[mode].call({"cmd": "run", "path": path, "n": args.requests})
                    timing[page][mode].append(
                        {
                            "latency_ms_p50": statistics.median(answer["latencies_ns"]) / 1e6,
                            "cpu_ms_per_request": answer["cpu_s"] / args.requests * 1e3,
                            "request_thread_cpu_ms": answer.get("cpu_request_thread_s", 0)
                            / args.requests
                            * 1e3,
                            "gc_ms": answer.get("gc_s", 0) / args.requests * 1e3,
                            "gc_collections": answer.get("gc_collections"),
                        }
                    )
            log(f"in-process round {round_ + 1}/{args.rounds}")
        for page, by_mode in timing.items():
            results["timing"][page] = {
                mode: {
                    "latency_ms_p50": round(statistics.median(r["latency_ms_p50"] for r in rows), 3),
                    "cpu_ms_per_request": round(statistics.median(r["cpu_ms_per_request"] for r in rows), 3),
                    "request_thread_cpu_ms": round(
                        statistics.median(r["request_thread_cpu_ms"] for r in rows), 3
                    ),
                    "cpu_ms_per_round": [round(r["cpu_ms_per_request"], 2) for r in rows],
                    "gc_ms_per_request": round(statistics.median(r["gc_ms"] for r in rows), 3),
                    "gc_collections_per_round": [r["gc_collections"] for r in rows],
                }
                for mode, rows in by_mode.items()
            }
        counts = args.counts or {}
        for page, path in paths.items() if args.cprofile else ():
            for mode in [m for m in ("none", "hms", "otel") if m in workers]:
                out = out_dir / f"{page}-{mode}.prof"
                workers[mode].call(
                    {"cmd": "profile", "path": path, "n": args.profile_requests, "out": str(out)}
                )
                results["profiles"].setdefault(page, {})[mode] = {"layers": layers(out)}
                if mode == "hms":
                    results["profiles"][page][mode]["functions"] = agent_functions(
                        out, args.profile_requests, counts.get(page, {}).get("sql")
                    )
                if args.pyinstrument and mode == "hms":
                    workers[mode].call(
                        {
                            "cmd": "profile",
                            "path": path,
                            "n": args.profile_requests,
                            "out": str(out_dir / f"{page}-{mode}.pyinstrument.txt"),
                            "tool": "pyinstrument",
                        }
                    )
        results["out_dir"] = str(out_dir)
    finally:
        for worker in workers.values():
            worker.stop()
        sink.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("setup", "bench", "profile"))
    parser.add_argument("--checkout", required=True, help="a NetBox source tree (tag v4.4.10 measured)")
    parser.add_argument("--venv", help="its venv (default CHECKOUT/.venv-bench)")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--db-name", default="netbox_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="uses this db and the next")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES))
    parser.add_argument("--pages", default=",".join(PAGES), help="subset of " + ",".join(PAGES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30, help="serial requests per page, mode and round")
    parser.add_argument("--profile-requests", type=int, default=40)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--no-cprofile", dest="cprofile", action="store_false", help="profile: timing only")
    parser.add_argument("--counts", help="a bench results JSON whose statement counts the profile divides by")
    parser.add_argument("--out", help="profile: where the profiles go")
    parser.add_argument("--output", help="results JSON (default benchmarks/results/real_app_<date>.json)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.modes = [m for m in MODES if m in args.modes.split(",")]
    args.pages = [p for p in PAGES if p in args.pages.split(",")]
    if args.command == "setup":
        setup(args)
        return 0
    if args.counts:
        args.counts = json.loads(Path(args.counts).read_text()).get("bench", {}).get("counts")
    started = dt.datetime.now()
    results: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "benchmarks/real_app.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "loadavg_start": os.getloadavg(),
        args.command: bench(args) if args.command == "bench" else profile(args),
        "loadavg_end": os.getloadavg(),
    }
    results["elapsed_s"] = round((dt.datetime.now() - started).total_seconds(), 1)
    output = (
        Path(args.output) if args.output else HERE / "results" / f"real_app_{started:%Y-%m-%d_%H%M%S}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(
        json.dumps({k: v for k, v in results[args.command].items() if k not in ("sink",)}, indent=1)[:20000]
    )
    print(
        f"results: {output} ({results['elapsed_s']:.0f} s; load {results['loadavg_start'][0]:.1f} -> "
        f"{results['loadavg_end'][0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
