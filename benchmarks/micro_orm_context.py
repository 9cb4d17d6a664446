"""Cost of the ORM context capture per query: ``python benchmarks/micro_orm_context.py``.

Runs real queries against PostgreSQL ($HMS_OTEL_TEST_DATABASE_URL, else a throwaway pgserver)
through Django and the bundled sample app (a fresh database, migrated and seeded), once with
``instrument.django_orm`` installed and once without, and prints microseconds per query for each
and the difference. Tracing is off in both runs: the difference is the capture alone (the
patches, the frame walk to user code, the OrmContext), not the span. Each scenario runs exactly
one SQL statement per call; installed and uninstalled blocks alternate and the best block counts.

The columns are this thread's CPU time per query (``time.thread_time``: Django, psycopg and the
agent, without the wait for the server, which a loaded machine makes noisy by hundreds of µs), the
difference, an A/A noise floor (a second run without the patches against the first) and, for
reference, the wall time. When the difference is within the noise, the second table, which times
the capture functions alone (as the patches call them, without SQL), is the number to read.

Prints results only (no assertions). Options: ``--number`` calls per block, ``--repeat`` blocks per
mode, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test harness starts a throwaway PostgreSQL


@contextmanager
def _database() -> Iterator[str]:
    from harness.services import (
        DATABASE_URL_ENV,
        PrivatePostgres,
        create_database,
        drop_database,
        new_database_name,
    )

    server = None
    server_url = os.environ.get(DATABASE_URL_ENV)
    if not server_url:
        server = PrivatePostgres()
        server_url = server.start()
    name = new_database_name() + "_bench"
    url = create_database(server_url, name)
    try:
        yield url
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(server_url, name)
        if server is not None:
            server.stop()


def _setup_django(url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="hms_otel_agent.sample.settings",
        DATABASE_URL=url,
        HMS_SAMPLE_CACHE_BACKEND="locmem",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_hms", patients=40, seed=1, verbosity=0)


def _scenarios() -> dict[str, Callable[[], Any]]:
    from hms_otel_agent.sample.hms.models import Encounter, Facility, Insurance, Patient

    patient = Patient.objects.order_by("id").first()
    encounter = Encounter.objects.order_by("id").first()
    facility = Facility.objects.order_by("id").first()
    assert patient is not None and encounter is not None and facility is not None
    pk = patient.pk

    def lazy_forward() -> Any:
        encounter._state.fields_cache.pop("patient", None)
        return encounter.patient

    def deferred() -> Any:
        patient.__dict__.pop("date_of_birth", None)
        return patient.date_of_birth

    return {
        "plain query: list(filter(pk=))": lambda: list(Patient.objects.filter(pk=pk)),
        "get(pk=)": lambda: Patient.objects.get(pk=pk),
        "count()": lambda: Patient.objects.count(),
        "lazy forward FK: encounter.patient": lazy_forward,
        "lazy reverse FK: list(p.emergency_contacts.all())": lambda: list(patient.emergency_contacts.all()),
        "related count: facility.encounters.count()": lambda: facility.encounters.count(),
        "deferred field: patient.date_of_birth": deferred,
        "update (compiler fallback)": lambda: Insurance.objects.filter(pk=-1).update(plan_code="x"),
        "select_related, 20 rows (paths per row)": lambda: list(
            Encounter.objects.select_related("patient", "facility").order_by("id")[:20]
        ),
    }


def _count_statements(func: Callable[[], Any]) -> int:
    from django.db import connection

    seen = []

    def count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        func()
    return len(seen)


def _calibration() -> float:
    return min(timeit.repeat("for _ in range(1000): pass", number=2000, repeat=7)) / 2000 * 1e6


def _block_us(func: Callable[[], Any], number: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of this thread."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(number):
        func()
    return (time.thread_time() - cpu) / number * 1e6, (time.perf_counter() - wall) / number * 1e6


def _capture_alone(number: int, repeat: int) -> dict[str, float]:
    """The capture functions called as the patches call them, from user code, without SQL."""
    from hms_otel_agent.instrument import django_orm
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    django_orm.install()  # before building the querysets: related managers tag theirs
    patient = Patient.objects.order_by("id").first()
    queryset = Patient.objects.filter(pk=1)
    related = patient.emergency_contacts.all()
    compiler = Encounter.objects.all().query.get_compiler("default")
    rows = list(Encounter.objects.select_related("patient", "facility").order_by("id")[:20])
    selected = Encounter.objects.select_related("patient", "facility").order_by("id")[:20]
    selected._result_cache = rows

    def get() -> None:
        django_orm._pop(django_orm._open_queryset(queryset, "get", True))

    def lazy() -> None:
        django_orm._pop(django_orm._open_relation(patient, "insurance", "forward")[0])

    def tagged() -> None:
        django_orm._pop(django_orm._open_fetch(related))

    def fallback() -> None:
        django_orm._pop(django_orm._open_compiler(compiler))

    def tag_manager_queryset() -> None:
        patient.emergency_contacts.get_queryset()

    def paths_20_rows() -> None:
        django_orm._after_fetch(selected)

    def best(func: Callable[[], Any]) -> float:
        return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6

    results = {
        "get()/count()/exists() context": best(get),
        "lazy load context (descriptor)": best(lazy),
        "related manager queryset context (tagged)": best(tagged),
        "compiler fallback context": best(fallback),
        "select_related paths, 20 rows x 2 joins": best(paths_20_rows),
    }
    with_tag = best(tag_manager_queryset)
    django_orm.uninstall()
    results["related manager get_queryset() tag"] = with_tag - best(tag_manager_queryset)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cost of the ORM context capture per query.")
    parser.add_argument("--number", type=int, default=100, help="queries per timed block")
    parser.add_argument("--repeat", type=int, default=30, help="timed blocks per mode and scenario")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with _database() as url:
        _setup_django(url)
        import django

        from hms_otel_agent.instrument import django_orm

        scenarios = _scenarios()
        calibration = _calibration()
        print(
            f"Python {platform.python_version()}, Django {django.get_version()}, PostgreSQL "
            f"(best of {args.repeat} alternating blocks of {args.number} queries); "
            f"calibration `for _ in range(1000): pass` = {calibration:.1f} µs"
        )
        header = f"{'without':>8} {'with':>8} {'context':>8} {'A/A noise':>9} {'wall w/o':>9}"
        print(f"  {'CPU µs per query':<52} {header}")
        rows: list[dict[str, Any]] = []
        for name, func in scenarios.items():
            django_orm.install()
            statements = _count_statements(func)
            assert statements == 1, (name, statements)
            func()
            # "again" is a second, independent "without" series: its distance to "without" is the
            # noise floor of this machine (an A/A comparison).
            cpu = {"without": float("inf"), "with": float("inf"), "again": float("inf")}
            wall = float("inf")
            for _ in range(args.repeat):
                for mode in ("with", "without", "again"):
                    if mode == "with":
                        django_orm.install()
                    else:
                        django_orm.uninstall()
                    block_cpu, block_wall = _block_us(func, args.number)
                    cpu[mode] = min(cpu[mode], block_cpu)
                    if mode == "without":
                        wall = min(wall, block_wall)
            delta = cpu["with"] - cpu["without"]
            noise = abs(cpu["again"] - cpu["without"])
            rows.append(
                {
                    "scenario": name,
                    "without": round(cpu["without"], 2),
                    "with": round(cpu["with"], 2),
                    "delta": round(delta, 2),
                    "noise": round(noise, 2),
                }
            )
            measured = f"{cpu['without']:8.1f} {cpu['with']:8.1f} {delta:+8.2f} {noise:9.2f} {wall:9.1f}"
            print(f"  {name:<52} {measured}")
        django_orm.uninstall()
        print(f"  {'capture alone, no SQL (µs per call, best of 7)':<52}")
        for name, us in _capture_alone(5000, 7).items():
            rows.append({"scenario": f"alone: {name}", "delta": round(us, 2)})
            print(f"  {name:<52} {'':8} {'':8} {us:+8.2f}")
    print(
        f"calibration at the end = {_calibration():.1f} µs ({time.monotonic() - started:.0f} s); "
        "divide by it to compare machines (an idle laptop: ~10-12 µs)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"python": platform.python_version(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
