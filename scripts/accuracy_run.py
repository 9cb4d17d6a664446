"""Accuracy study: run an open-source Django application under the agent and check its findings.

Used for ``docs/accuracy.md``. Two applications are profiled (``--app netbox`` and
``--app babybuddy``); a checkout of each is made with the search tool's ``fetch`` (or ``git
clone``) as described in ``docs/accuracy.md``, never committed here. Every step is re-runnable:

    setup   create the database, migrate, seed (NetBox: the netbox-demo-data SQL dump,
            Baby Buddy: its ``fake`` command), keep a template copy for resets
    agent   reset the database from the template, start the app under ``hms-otel-run``
            (``manage.py runserver --noreload``), request every page of the profile, run its
            management commands under ``hms-otel-run`` too, stop, and collect the live log,
            the local OTLP-JSON file and ``hms-otel report --format json``
    count   in-process reference (no agent): the same pages through Django's test client,
            every query captured with its stack (project frames, the template and line being
            rendered), repeated statements grouped, django-zeal's N+1 alerts when installed;
            ``--fix ID`` applies a fix (scripts/accuracy_fixes.py) first, so a fix is proven by
            the query count before/after and the page's status
    compare the agent's findings per page next to the reference's repeated statements:
            findings to judge and repeated statements no finding covers (misses)

The ``agent`` and ``setup`` steps run with any Python 3.10+; ``count`` re-executes itself with
the application's virtualenv (``--venv``), which also has the agent installed
(``pip install -e <this repo>``).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}

# --- application profiles ------------------------------------------------------------------------
# Paths: {name} placeholders are filled from `ids` (one SQL query each, run with psql).

NETBOX_CONFIG = """\
# accuracy study configuration (written by scripts/accuracy_run.py; not part of NetBox)
import os
ALLOWED_HOSTS = ['*']
DATABASES = {{'default': {{
    'ENGINE': 'django.db.backends.postgresql', 'NAME': os.environ.get('ACC_DB', '{db}'),
    'USER': 'postgres', 'PASSWORD': '', 'HOST': '127.0.0.1', 'PORT': 5432, 'CONN_MAX_AGE': 300,
}}}}
REDIS = {{
    'tasks': {{'HOST': '127.0.0.1', 'PORT': 6379, 'DATABASE': 13, 'SSL': False,
               'USERNAME': '', 'PASSWORD': ''}},
    'caching': {{'HOST': '127.0.0.1', 'PORT': 6379, 'DATABASE': 14, 'SSL': False,
                 'USERNAME': '', 'PASSWORD': ''}},
}}
SECRET_KEY = 'accuracy-study-not-secret-0123456789-0123456789-0123456789'
API_TOKEN_PEPPERS = {{1: 'accuracy-study-pepper-0123456789-0123456789-0123456789'}}
DEBUG = False
REMOTE_AUTH_ENABLED = True
REMOTE_AUTH_HEADER = 'HTTP_REMOTE_USER'
RELEASE_CHECK_URL = None
"""

GRAPHQL_DEVICES = (
    "{ device_list(pagination: {limit: 30}) { name site { name } role { name } "
    "interfaces { name ip_addresses { address } } tags { name } } }"
)


def _most(column: str, table: str) -> str:
    return (
        f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL GROUP BY {column} "
        f"ORDER BY count(*) DESC, {column} LIMIT 1"
    )


PROFILES: dict[str, dict[str, Any]] = {
    "netbox": {
        "project": "netbox",  # manage.py's directory inside the checkout
        "settings": "netbox.settings",
        "db": "accuracy_netbox",
        "env": {},
        "headers": {"Remote-User": "admin"},  # REMOTE_AUTH_ENABLED: the demo data's superuser
        "ids": {
            # the device with the most interfaces, the site / rack with the most devices, ...
            "device": _most("device_id", "dcim_interface"),
            "site": _most("site_id", "dcim_device"),
            "rack": _most("rack_id", "dcim_device"),
            "prefix": "SELECT id FROM ipam_prefix ORDER BY prefix LIMIT 1",
            "vm": _most("virtual_machine_id", "virtualization_vminterface"),
            "tenant": _most("tenant_id", "dcim_device"),
        },
        "pages": [
            "/",
            "/search/?q=dmi01",
            "/dcim/devices/",
            "/dcim/devices/{device}/",
            "/dcim/devices/{device}/interfaces/",
            "/dcim/interfaces/",
            "/dcim/sites/",
            "/dcim/sites/{site}/",
            "/dcim/racks/",
            "/dcim/racks/{rack}/",
            "/dcim/cables/",
            "/dcim/device-types/",
            "/dcim/console-ports/",
            "/ipam/prefixes/",
            "/ipam/prefixes/{prefix}/",
            "/ipam/ip-addresses/",
            "/ipam/vlans/",
            "/ipam/aggregates/",
            "/circuits/circuits/",
            "/circuits/providers/",
            "/virtualization/virtual-machines/",
            "/virtualization/virtual-machines/{vm}/",
            "/tenancy/tenants/",
            "/tenancy/tenants/{tenant}/",
            "/extras/tags/",
            "/core/changelog/",
            "/api/dcim/devices/",
            "/api/dcim/devices/{device}/",
            "/api/dcim/interfaces/",
            "/api/dcim/sites/",
            "/api/dcim/racks/",
            "/api/dcim/cables/",
            "/api/dcim/console-ports/",
            "/api/ipam/prefixes/",
            "/api/ipam/ip-addresses/",
            "/api/ipam/vlans/",
            "/api/circuits/circuits/",
            "/api/virtualization/virtual-machines/",
            "/api/tenancy/tenants/",
            "/api/extras/tags/",
            "/api/core/object-changes/",
            "/api/dcim/interfaces/?brief=1",
            ("POST", "/graphql/", {"query": GRAPHQL_DEVICES}),
        ],
        "commands": [
            ["calculate_cached_counts"],
            ["rebuild_prefixes"],
            ["trace_paths", "--force", "--no-input"],
        ],
    },
    "babybuddy": {
        "project": ".",
        "settings": "babybuddy.settings.base",
        "db": "accuracy_babybuddy",
        "env": {
            "DB_ENGINE": "django.db.backends.postgresql",
            "DB_USER": "postgres",
            "DB_HOST": "127.0.0.1",
            "SECRET_KEY": "accuracy-study-not-secret",
            "REVERSE_PROXY_AUTH": "true",  # babybuddy.middleware.CustomRemoteUser
        },
        "db_env": "DB_NAME",
        "headers": {"Remote-User": "admin"},  # the user its first migration creates
        "ids": {
            "child": "SELECT slug FROM core_child ORDER BY id LIMIT 1",
            "feeding": "SELECT id FROM core_feeding ORDER BY id LIMIT 1",
            "tag": "SELECT t.slug FROM core_tag t JOIN core_tagged i ON i.tag_id = t.id "
            "GROUP BY t.slug ORDER BY count(*) DESC LIMIT 1",
        },
        "pages": [
            "/dashboard/",
            "/children/",
            "/children/{child}/",
            "/timeline/",
            "/feedings/",
            "/feedings/{feeding}/",
            "/changes/",
            "/sleep/",
            "/notes/",
            "/tummy-time/",
            "/temperature/",
            "/weight/",
            "/timers/",
            "/tags/",
            "/tags/{tag}/",
            "/children/{child}/reports/feeding/amounts/",
            "/children/{child}/reports/sleep/pattern/",
            "/api/feedings/",
            "/api/changes/",
            "/api/notes/",
            "/api/sleep/",
            "/api/children/",
            "/api/tags/",
            "/api/timers/",
            "/admin/core/feeding/",
            "/admin/core/note/",
            "/admin/core/diaperchange/",
            "/admin/core/sleep/",
            "/admin/core/child/",
            "/admin/core/tag/",
            "/admin/core/feeding/{feeding}/change/",
        ],
        "commands": [
            ["fake", "--children", "1", "--days", "3"],
        ],
        "seed": [["fake", "--children", "3", "--days", "60"]],
    },
}


# --- helpers -------------------------------------------------------------------------------------


def psql(sql: str, db: str = "postgres") -> str:
    out = subprocess.run(
        [
            "psql",
            "-h",
            PG["host"],
            "-p",
            PG["port"],
            "-U",
            PG["user"],
            "-d",
            db,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def reset_db(db: str) -> None:
    """The database again as `setup` left it (a copy of its template)."""
    psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{db}" TEMPLATE "{db}_seed"')


def app_env(profile: dict[str, Any], db: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(profile["env"])
    env["DJANGO_SETTINGS_MODULE"] = profile["settings"]
    env["ACC_DB"] = db
    if profile.get("db_env"):
        env[profile["db_env"]] = db
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return env


def project_dir(args: argparse.Namespace) -> Path:
    return Path(args.checkout).resolve() / PROFILES[args.app]["project"]


def venv_bin(args: argparse.Namespace, name: str) -> str:
    return str(Path(args.venv).resolve() / "bin" / name)


def resolve_pages(profile: dict[str, Any], db: str) -> list[tuple[str, str, Any]]:
    ids = {name: psql(sql, db) for name, sql in profile["ids"].items()}
    pages = []
    for page in profile["pages"]:
        method, path, body = ("GET", page, None) if isinstance(page, str) else page
        pages.append((method, path.format(**ids), body))
    return pages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- setup ---------------------------------------------------------------------------------------


def cmd_setup(args: argparse.Namespace) -> None:
    profile = PROFILES[args.app]
    db = args.db or profile["db"]
    proj = project_dir(args)
    env = app_env(profile, db)
    python = venv_bin(args, "python")
    if args.app == "netbox":
        (proj / "netbox" / "configuration.py").write_text(NETBOX_CONFIG.format(db=db))
        stub = proj / "extras" / "data" / "un_locode.py"
        if not stub.exists():  # a 2 MB data file some snapshots do not carry; only a choice set uses it
            stub.write_text('UN_LOCODE = (("USNYC", "New York"),)\n')
    psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{db}"')
    if args.app == "netbox":
        if not args.seed_sql:
            sys.exit("netbox needs --seed-sql (netbox-demo-data's sql/netbox-demo-v4.1.sql)")
        dump = Path(args.seed_sql).read_text()
        dump = "\n".join(line for line in dump.splitlines() if "OWNER TO netbox" not in line)
        subprocess.run(
            ["psql", "-q", "-h", PG["host"], "-U", PG["user"], "-d", db, "-v", "ON_ERROR_STOP=1"],
            input=dump,
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    subprocess.run([python, "manage.py", "migrate", "--no-input"], cwd=proj, env=env, check=True)
    for command in profile.get("seed", []):
        subprocess.run([python, "manage.py", *command], cwd=proj, env=env, check=True)
    psql(f'DROP DATABASE IF EXISTS "{db}_seed" WITH (FORCE)')
    psql(f'CREATE DATABASE "{db}_seed" TEMPLATE "{db}"')
    print(f"setup done: database {db} (template {db}_seed)")


# --- agent run -----------------------------------------------------------------------------------


class Driver:
    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base = base
        self.headers = headers
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def request(self, method: str, path: str, body: Any = None, tag: str = "") -> tuple[int, int, float]:
        data = None
        headers = dict(self.headers)
        headers["User-Agent"] = f"accuracy-run/{tag}"  # ties the server span to this request
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            headers["Accept"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        start = time.perf_counter()
        try:
            with self.opener.open(req, timeout=120) as resp:
                content = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            content = exc.read()
            status = exc.code
        return status, len(content), (time.perf_counter() - start) * 1000


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"no answer from {url} after {timeout_s:.0f} s")


def cmd_agent(args: argparse.Namespace) -> None:
    profile = PROFILES[args.app]
    db = args.db or profile["db"]
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    local = out / "hms-otel"
    out.mkdir(parents=True)
    if not args.no_reset:
        reset_db(db)
    proj = project_dir(args)
    env = app_env(profile, db)
    env["HMS_OTEL_LOCAL_DIR"] = str(local)
    env["HMS_OTEL_REPORT"] = "false"
    for setting in args.setting:
        key, _, value = setting.partition("=")
        env[key] = value
    run = venv_bin(args, "hms-otel-run")
    python = venv_bin(args, "python")
    pages = resolve_pages(profile, db)
    port = args.port or free_port()
    log = (out / "server.log").open("wb")
    server = subprocess.Popen(
        [run, "--", python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=proj,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results = []
    try:
        wait_http(f"http://127.0.0.1:{port}/", server, 300)
        driver = Driver(f"http://127.0.0.1:{port}", profile["headers"])
        for round_no in range(args.rounds):
            for method, path, body in pages:
                status, size, ms = driver.request(method, path, body, tag=str(len(results)))
                results.append(
                    {
                        "round": round_no,
                        "method": method,
                        "path": path,
                        "status": status,
                        "bytes": size,
                        "ms": round(ms, 1),
                    }
                )
                print(f"  {status} {ms:8.1f} ms {method} {path}", flush=True)
    finally:
        os.kill(server.pid, signal.SIGINT)  # the process this function started
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    (out / "pages.json").write_text(json.dumps(results, indent=1))
    commands = []
    for command in profile.get("commands", []) if not args.no_commands else []:
        name = "-".join(command)
        start = time.perf_counter()
        proc = subprocess.run(
            [run, "--", python, "manage.py", *command], cwd=proj, env=env, capture_output=True, text=True
        )
        (out / f"command-{name}.log").write_text(proc.stdout + proc.stderr)
        commands.append(
            {"command": command, "returncode": proc.returncode, "s": round(time.perf_counter() - start, 1)}
        )
        print(f"  command {' '.join(command)}: exit {proc.returncode}", flush=True)
    (out / "commands.json").write_text(json.dumps(commands, indent=1))
    report = subprocess.run(
        [venv_bin(args, "hms-otel"), "report", "--format", "json", str(local)], capture_output=True, text=True
    )
    (out / "report.json").write_text(report.stdout)
    if report.returncode:
        print(report.stderr, file=sys.stderr)
    (out / "report.txt").write_text(
        subprocess.run(
            [venv_bin(args, "hms-otel"), "report", str(local)], capture_output=True, text=True
        ).stdout
    )
    (out / "per_page.json").write_text(json.dumps(per_page_findings(local), indent=1))
    print(f"agent run written to {out}")


def _value(v: dict[str, Any]) -> Any:
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in v:
            return int(v[key]) if key == "intValue" else v[key]
    return None


def _attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a["value"]) for a in items}


def per_page_findings(local: Path) -> list[dict[str, Any]]:
    """Owner spans (requests, commands) with their finding events, in the order they ended."""
    owners = []
    path = local / "traces.jsonl"
    if not path.exists():
        return owners
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    attrs = _attrs(span.get("attributes", []))
                    if "hms.findings.count" not in attrs and "hms.db.query_count" not in attrs:
                        continue
                    events = []
                    for event in span.get("events", []):
                        ev = _attrs(event.get("attributes", []))
                        if "hms.finding.kind" in ev:
                            events.append(ev)
                    owners.append(
                        {
                            "name": span["name"],
                            "url": attrs.get("http.url") or attrs.get("url.full") or "",
                            "user_agent": attrs.get("http.user_agent")
                            or attrs.get("user_agent.original")
                            or "",
                            "route": attrs.get("http.route", ""),
                            "status": attrs.get("http.status_code") or attrs.get("http.response.status_code"),
                            "queries": attrs.get("hms.db.query_count"),
                            "db_ms": attrs.get("hms.db.duration_ms"),
                            "end": int(span.get("endTimeUnixNano", 0)),
                            "findings": events,
                        }
                    )
    owners.sort(key=lambda o: o["end"])
    return owners


# --- reference counting (in-process, no agent) ---------------------------------------------------

_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")
_IN_LIST = re.compile(r"IN \((?:%s, )*%s\)")


def normalize(sql: str) -> str:
    return _IN_LIST.sub("IN (...)", _LITERAL.sub("?", sql))


def _stack(project: str) -> tuple[list[str], str, list[str]]:
    """Frames of the project (innermost last), the template line being rendered, and the
    library frames between the innermost project frame and the database (the ORM's path)."""
    frames = []
    template = ""
    libs: list[str] = []
    frame = sys._getframe(2)
    chain = []
    while frame is not None:
        chain.append(frame)
        frame = frame.f_back
    for fr in chain:  # innermost first
        code = fr.f_code
        if not template and code.co_name == "render_annotated":
            node = fr.f_locals.get("self")
            origin = getattr(node, "origin", None)
            token = getattr(node, "token", None)
            if origin is not None and token is not None:
                template = f"{getattr(origin, 'template_name', None) or origin.name}:{token.lineno}"
    seen_project = False
    for fr in reversed(chain):  # outermost first
        filename = fr.f_code.co_filename
        if filename.startswith(project) and "/site-packages/" not in filename:
            frames.append(f"{filename[len(project) :].lstrip('/')}:{fr.f_lineno} in {fr.f_code.co_name}")
            seen_project = True
            libs = []
        elif seen_project and "/site-packages/" in filename:
            short = filename.split("/site-packages/", 1)[1]
            libs.append(f"{short}:{fr.f_lineno} in {fr.f_code.co_name}")
    return frames, template, libs[:6]


def edit_source(path: Path, text: str, replacement: str) -> None:
    """Apply a fix to the checkout's source for this process's lifetime (restored at exit)."""
    original = path.read_bytes().decode()  # as it is: some checkouts have CRLF line endings
    if "\r\n" in original:
        text, replacement = text.replace("\n", "\r\n"), replacement.replace("\n", "\r\n")
    if original.count(text) != 1:
        raise SystemExit(f"{path}: the text to replace is not there exactly once: {text!r}")
    path.write_bytes(original.replace(text, replacement).encode())
    atexit.register(path.write_bytes, original.encode())


def cmd_count(args: argparse.Namespace) -> None:
    venv_python = venv_bin(args, "python")
    if Path(sys.prefix).resolve() != Path(args.venv).resolve() and not os.environ.get("ACC_IN_VENV"):
        env = app_env(PROFILES[args.app], args.db or PROFILES[args.app]["db"])
        env["ACC_IN_VENV"] = "1"
        os.execve(venv_python, [venv_python, str(Path(__file__).resolve()), *sys.argv[1:]], env)
    profile = PROFILES[args.app]
    db = args.db or profile["db"]
    proj = project_dir(args)
    if not args.no_reset:
        reset_db(db)
    pages = resolve_pages(profile, db)
    os.chdir(proj)
    sys.path.insert(0, str(proj))
    sys.path.insert(0, str(HERE))
    import accuracy_fixes

    for fix_id in args.fix:
        for relpath, text, replacement in accuracy_fixes.SOURCE_EDITS[args.app].get(fix_id, []):
            edit_source(proj / relpath, text, replacement)
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.urls import Resolver404, resolve

    settings.ALLOWED_HOSTS = ["*"]
    zeal_alerts: list[str] = []
    zeal_context: Any = None
    try:
        from zeal import zeal_context as _zc
        from zeal.constants import initialize_app_registry
        from zeal.patch import patch
        from zeal.signals import nplusone_detected

        initialize_app_registry()
        patch()
        settings.ZEAL_RAISE = False
        warnings.filterwarnings("ignore", message="N\\+1 detected")
        settings.ZEAL_NPLUSONE_THRESHOLD = args.zeal_threshold

        def on_alert(sender: Any, exception: Exception, **kw: Any) -> None:
            zeal_alerts.append(str(exception))

        nplusone_detected.connect(on_alert, weak=False)
        zeal_context = _zc
    except ImportError:
        pass

    applied = []
    for fix_id in args.fix:
        accuracy_fixes.apply(args.app, fix_id)
        applied.append(fix_id)

    if args.check_hints:
        checks = []
        for label, hint, build in accuracy_fixes.HINTS[args.app]:
            try:
                outcome = f"ok: {str(build())[:120]}"
            except Exception as exc:
                outcome = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
            checks.append({"finding": label, "hint": hint, "outcome": outcome})
            print(f"  {label}: {hint}\n      -> {outcome}", flush=True)
        Path(args.out).write_text(json.dumps({"app": args.app, "hint_checks": checks}, indent=1))
        return

    headers = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in profile["headers"].items()}
    client = Client(**headers)
    project = str(proj) + "/"

    def measure(method: str, path: str, do: Any, warm_up: bool) -> dict[str, Any]:
        captured: list[dict[str, Any]] = []

        def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            frames, template, libs = _stack(project)
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                captured.append(
                    {
                        "sql": sql,
                        "params": repr(params)[:500],
                        "ms": (time.perf_counter() - start) * 1000,
                        "frames": frames,
                        "template": template,
                        "libs": libs,
                    }
                )

        if warm_up:  # per-process caches (config, content types) filled as on a running server
            with contextlib.suppress(Exception):  # a broken page fails again below, and is recorded
                do()
        zeal_alerts.clear()
        error = ""
        status, size = 0, 0
        with connection.execute_wrapper(wrapper):
            try:
                if zeal_context is not None:
                    with zeal_context():
                        resp = do()
                else:
                    resp = do()
                status = getattr(resp, "status_code", 0)
                size = len(getattr(resp, "content", b""))
            except Exception as exc:  # a fix that breaks the page: record, do not stop
                status = 599
                error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:500]
        route = ""
        if method in ("GET", "POST"):
            with contextlib.suppress(Resolver404):
                route = resolve(path.split("?")[0]).route
        groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for q in captured:
            groups[normalize(q["sql"])].append(q)
        repeated = []
        for norm, qs in groups.items():
            if len(qs) < 2:
                continue
            params = collections.Counter(q["params"] for q in qs)
            sites = collections.Counter((q["frames"][-1] if q["frames"] else "", q["template"]) for q in qs)
            repeated.append(
                {
                    "count": len(qs),
                    "distinct_params": len(params),
                    "ms": round(sum(q["ms"] for q in qs), 2),
                    "sql": norm[:400],
                    "sites": [{"frame": f, "template": t, "count": c} for (f, t), c in sites.most_common(4)],
                    "stack": qs[0]["frames"][-8:],
                    "libs": qs[0]["libs"],
                }
            )
        repeated.sort(key=lambda g: -g["count"])
        top = ", ".join(f"{g['count']}x" for g in repeated[:5])
        print(f"  {status} {len(captured):5d} queries {method} {path}  repeated: {top}", flush=True)
        return {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "bytes": size,
            "error": error,
            "queries": len(captured),
            "db_ms": round(sum(q["ms"] for q in captured), 1),
            "repeated": repeated,
            "zeal": sorted(set(zeal_alerts)),
        }

    results = []
    for method, path, body in pages:
        if args.only and not any(path == o[1:] if o.startswith("=") else o in path for o in args.only):
            continue

        def request(method: str = method, path: str = path, body: Any = body) -> Any:
            if method == "POST":
                return client.post(
                    path,
                    data=json.dumps(body),
                    content_type="application/json",
                    HTTP_ACCEPT="application/json",
                )
            return client.get(path)

        results.append(measure(method, path, request, warm_up=True))
    if not args.only and not args.no_commands:
        from django.core.management import call_command

        for command in profile.get("commands", []):
            results.append(
                measure("COMMAND", " ".join(command), lambda c=command: call_command(*c), warm_up=False)
            )
    out = {"app": args.app, "fixes": applied, "pages": results}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"reference counts written to {args.out}")


# --- compare -------------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> None:
    agent = json.loads((Path(args.agent) / "per_page.json").read_text())
    pages = json.loads((Path(args.agent) / "pages.json").read_text())
    ref = json.loads(Path(args.reference).read_text())
    ref_by_path = {p["path"]: p for p in ref["pages"]}
    # Each request's User-Agent carries its index in pages.json (URLs cannot be matched: identifying
    # query values are redacted). Older runs without it: the order the requests ended.
    tagged = {
        o["user_agent"].partition("/")[2]: o
        for o in agent
        if o.get("user_agent", "").startswith("accuracy-run/")
    }
    # Newer agents keep only a User-Agent's browser and system and no full URL: their server
    # spans are matched by route (the reference's route of the page), in the order they ended.
    by_route: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for o in agent:
        if o.get("status") is not None:
            by_route[o.get("route", "")].append(o)
    lines = []
    for index, page in enumerate(pages):
        r = ref_by_path.get(page["path"], {})
        owner = tagged.get(str(index))
        if not tagged:
            queue = by_route.get(r.get("route", ""), [])
            owner = queue.pop(0) if queue else None
        if page["round"] != args.round:
            continue
        lines.append(f"## {page['method']} {page['path']}  status {page['status']}")
        if owner is None:
            lines.append("  (no owner span found)")
        else:
            lines.append(f"  agent: {owner['queries']} queries, {len(owner['findings'])} findings")
            for f in owner["findings"]:
                loc = f"{f.get('code.file.path', '')}:{f.get('code.line.number', '')}"
                loc += f" in {f.get('code.function.name', '')}"
                subject = (
                    f.get("hms.orm.relation") or f.get("hms.cache.key_pattern") or f.get("hms.orm.model", "")
                )
                lines.append(
                    f"  - {f['hms.finding.kind']} x{f.get('hms.finding.repetitions')} {subject} "
                    f"[{f.get('hms.orm.relation_kind', '')}] at {loc}\n      fix: {f.get('hms.hint.fix', '')}"
                )
        if r:
            lines.append(f"  reference: {r['queries']} queries; repeated >= {args.min_repeat}:")
            for g in r["repeated"]:
                if g["count"] < args.min_repeat:
                    continue
                site = g["sites"][0]
                lines.append(
                    f"  * {g['count']}x ({g['distinct_params']} distinct params) {g['sql'][:160]}\n"
                    f"      at {site['frame']} {('template ' + site['template']) if site['template'] else ''}"
                )
            for z in r.get("zeal", []):
                lines.append(f"  zeal: {z}")
    for owner in agent:
        if not owner["url"] and owner.get("status") is None:
            counts = f"{owner['queries']} queries, {len(owner['findings'])} findings"
            lines.append(f"## {owner['name']} (not a request): {counts}")
            for f in owner["findings"]:
                lines.append(f"  - {f['hms.finding.kind']}: {f.get('hms.hint', '')}")
    text = "\n".join(lines) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("setup", "agent", "count"):
        p = sub.add_parser(name)
        p.add_argument("--app", choices=sorted(PROFILES), required=True)
        p.add_argument("--checkout", required=True, help="the application's source tree")
        p.add_argument("--venv", required=True, help="virtualenv with the app's requirements and the agent")
        p.add_argument("--db", help="database name (default: the profile's)")
    sub.choices["setup"].add_argument("--seed-sql", help="NetBox: the demo-data SQL dump")
    agent = sub.choices["agent"]
    agent.add_argument("--out", required=True)
    agent.add_argument("--rounds", type=int, default=2)
    agent.add_argument("--port", type=int)
    agent.add_argument("--no-reset", action="store_true")
    agent.add_argument("--no-commands", action="store_true")
    agent.add_argument("--setting", action="append", default=[], help="HMS_OTEL_X=value for the run")
    count = sub.choices["count"]
    count.add_argument("--out", required=True)
    count.add_argument("--fix", action="append", default=[], help="fix id from scripts/accuracy_fixes.py")
    count.add_argument(
        "--only", action="append", default=[], help="only pages whose path contains this (=PATH: is this)"
    )
    count.add_argument("--no-reset", action="store_true")
    count.add_argument("--no-commands", action="store_true")
    count.add_argument(
        "--check-hints", action="store_true", help="only compile the hints in accuracy_fixes.HINTS"
    )
    count.add_argument("--zeal-threshold", type=int, default=2)
    compare = sub.add_parser("compare")
    compare.add_argument("--agent", required=True, help="an `agent` output directory")
    compare.add_argument("--reference", required=True, help="a `count` output file")
    compare.add_argument(
        "--round", type=int, default=1, help="which round of requests to show (0: cold caches)"
    )
    compare.add_argument("--min-repeat", type=int, default=3)
    compare.add_argument("-o", "--output")
    args = parser.parse_args()
    {"setup": cmd_setup, "agent": cmd_agent, "count": cmd_count, "compare": cmd_compare}[args.step](args)


if __name__ == "__main__":
    main()
