"""Cost of unused-eager-loading tracking (``instrument/eager_loads.py``).

Run: ``python benchmarks/micro_eager.py``.

Runs against PostgreSQL ($HMS_OTEL_TEST_DATABASE_URL, else a throwaway pgserver) through Django
and the bundled sample app (a fresh database, migrated and seeded), with ``instrument.django_orm``
installed in every run; only the tracking is switched on and off (``eager_loads.configure``).
Tracing is off: the numbers are the tracking alone. Blocks with and without alternate, the best
block counts, and a second "without" series gives the A/A noise floor.

Four tables, CPU µs (``time.thread_time``):

1. per query: evaluating a queryset (the SQL included) with ``select_related`` / ``prefetch_related``
   — marking the loaded instances is the cost; a plain queryset shows the check every evaluation
   pays;
2. per relation read, no SQL: ``obj.relation`` on an instance whose caches are tracked (one
   Python-level ``__getitem__``) against a plain one — the common case is a read;
3. `track` alone on already fetched rows (no SQL, so no server noise): the marking per queryset.

Prints results only (no assertions). Options: ``--number``, ``--repeat``, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from micro_orm_context import _database, _setup_django  # noqa: E402


def _block_us(func: Callable[[], Any], number: int) -> float:
    cpu = time.thread_time()
    for _ in range(number):
        func()
    return (time.thread_time() - cpu) / number * 1e6


def _queries() -> dict[str, Callable[[], Any]]:
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    return {
        "plain queryset, 50 rows (the check only)": lambda: list(Patient.objects.order_by("id")[:50]),
        "select_related 2 joins, 50 rows": lambda: list(
            Encounter.objects.select_related("patient", "facility").order_by("id")[:50]
        ),
        "select_related nested (patient__insurance), 50 rows": lambda: list(
            Encounter.objects.select_related("patient__insurance").order_by("id")[:50]
        ),
        "prefetch_related reverse FK, 40 rows (2 queries)": lambda: list(
            Patient.objects.prefetch_related("emergency_contacts").order_by("id")[:40]
        ),
    }


def _reads(number: int, repeat: int) -> dict[str, float]:
    """µs per relation read: tracked minus plain instances, no SQL."""
    from hms_otel_agent.instrument import eager_loads
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    def load(on: bool) -> tuple[list[Any], list[Any]]:
        eager_loads.configure(on)
        encounters = list(Encounter.objects.select_related("patient").order_by("id")[:50])
        patients = list(Patient.objects.prefetch_related("emergency_contacts").order_by("id")[:40])
        return encounters, patients

    results = {}
    for label, on in (("plain", False), ("tracked", True)):
        encounters, patients = load(on)

        def forward(rows: list[Any] = encounters) -> None:
            for e in rows:
                e.patient  # noqa: B018

        def prefetched(rows: list[Any] = patients) -> None:
            for p in rows:
                p.emergency_contacts.all()

        results[f"forward FK read (select_related), {label}"] = (
            min(timeit.repeat(forward, number=number, repeat=repeat)) / number / len(encounters) * 1e6
        )
        results[f"prefetched manager .all(), {label}"] = (
            min(timeit.repeat(prefetched, number=number, repeat=repeat)) / number / len(patients) * 1e6
        )
    eager_loads.configure(False)
    return results


def _track_alone(number: int, repeat: int) -> dict[str, float]:
    """track() on fetched rows, minus putting plain caches back (which both timings do)."""
    from hms_otel_agent.instrument import django_orm, eager_loads
    from hms_otel_agent.sample.hms.models import Encounter

    results = {}
    for label, queryset in (
        ("select_related 2 joins, 50 rows", Encounter.objects.select_related("patient", "facility")),
        (
            "select_related nested, 50 rows (100 instances)",
            Encounter.objects.select_related("patient__insurance"),
        ),
    ):
        queryset = queryset.order_by("id")[:50]
        rows = list(queryset)
        related = [r._state.fields_cache.get(name) for r in rows for name in ("patient", "facility")]
        instances = [*rows, *(r for r in related if r is not None)]

        def plain(instances: list[Any] = instances) -> None:
            for obj in instances:
                state = obj._state
                state.fields_cache = dict(state.fields_cache)

        def tracked(queryset: Any = queryset, rows: list[Any] = rows, plain: Any = plain) -> None:
            plain()
            eager_loads.track(queryset, rows, django_orm._default_select_joins)

        eager_loads.configure(True)
        with_track = min(timeit.repeat(tracked, number=number, repeat=repeat))
        without = min(timeit.repeat(plain, number=number, repeat=repeat))
        results[label] = (with_track - without) / number * 1e6
        eager_loads.configure(False)
        eager_loads.reset()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cost of unused-eager-loading tracking.")
    parser.add_argument("--number", type=int, default=50, help="calls per timed block")
    parser.add_argument("--repeat", type=int, default=20, help="timed blocks per mode")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with _database() as url:
        _setup_django(url)
        import django

        from hms_otel_agent import config
        from hms_otel_agent.instrument import django_orm, eager_loads

        django_orm.install()
        eager_loads.install(config.load({}).settings, _NoTracer(), _NoMeter())
        django_orm._track_eager = eager_loads.track
        print(
            f"Python {platform.python_version()}, Django {django.get_version()}, PostgreSQL "
            f"(best of {args.repeat} alternating blocks of {args.number})"
        )
        print(f"  {'CPU µs per query':<54} {'without':>8} {'with':>8} {'delta':>8} {'A/A':>6}")
        for name, func in _queries().items():
            func()
            best = {"with": float("inf"), "without": float("inf"), "again": float("inf")}
            for _ in range(args.repeat):
                for mode in ("with", "without", "again"):
                    eager_loads.configure(mode == "with")
                    best[mode] = min(best[mode], _block_us(func, args.number))
                eager_loads.reset()  # outcomes pile up otherwise (no span processor drains them)
            delta = best["with"] - best["without"]
            noise = abs(best["again"] - best["without"])
            rows.append(
                {"scenario": name, **{k: round(v, 2) for k, v in best.items()}, "delta": round(delta, 2)}
            )
            print(f"  {name:<54} {best['without']:8.1f} {best['with']:8.1f} {delta:+8.2f} {noise:6.2f}")
        print(f"  {'CPU µs per relation read, no SQL':<54}")
        reads = _reads(200, 7)
        for name, us in reads.items():
            rows.append({"scenario": name, "us": round(us, 3)})
            print(f"  {name:<54} {us:8.3f}")
        extra_forward = (
            reads["forward FK read (select_related), tracked"]
            - reads["forward FK read (select_related), plain"]
        )
        extra_manager = (
            reads["prefetched manager .all(), tracked"] - reads["prefetched manager .all(), plain"]
        )
        label = "extra per read: forward FK / prefetched manager"
        print(f"  {label:<54} {extra_forward:+8.3f} {extra_manager:+8.3f}")
        print(f"  {'CPU µs of track() alone, no SQL':<54}")
        for name, us in _track_alone(2000, 7).items():
            rows.append({"scenario": f"alone: {name}", "us": round(us, 2)})
            print(f"  {name:<54} {us:+8.2f}")
        eager_loads.reset()
        django_orm._track_eager = None
        django_orm.uninstall()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"python": platform.python_version(), "rows": rows}, handle, indent=2)


class _NoTracer:
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry.trace import NoOpTracer

        return NoOpTracer()


class _NoMeter:
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry.metrics import NoOpMeter

        return NoOpMeter("bench")


if __name__ == "__main__":
    main()
