"""Micro-benchmarks of the pure signal functions: ``python benchmarks/micro_signals.py [--quick] [--json F]``.

Prints microseconds per call (best of several timeit repeats) for

* fingerprint_sql: cold (cache miss: the tokenizer + normalizer run) and hot (cache hit);
* mask_sql_literals: cold and hot;
* key_pattern: cold and hot;

on realistic Django / psycopg inputs, plus a calibration line (an empty 1000-step Python loop)
so numbers from different machines can be compared. ``--json F`` also writes the rows as JSON
(``benchmarks/run.py`` does, to keep them with the end-to-end results).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hms_otel_agent.signals import fingerprint as _fingerprint
from hms_otel_agent.signals import key_pattern as _key_pattern
from hms_otel_agent.signals import sql_mask as _sql_mask
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.key_pattern import key_pattern
from hms_otel_agent.signals.sql_mask import mask_sql_literals

# A typical ORM SELECT (~300 characters), as Django emits it for a related-object access.
DJANGO_SELECT = (
    'SELECT "hms_encounter"."id", "hms_encounter"."patient_id", "hms_encounter"."admitted_at", '
    '"hms_encounter"."ward" FROM "hms_encounter" INNER JOIN "hms_patient" ON '
    '("hms_encounter"."patient_id" = "hms_patient"."id") WHERE "hms_encounter"."patient_id" = %s '
    'ORDER BY "hms_encounter"."id" DESC LIMIT 21'
)
DJANGO_INSERT = (
    'INSERT INTO "hms_vital" ("encounter_id", "kind", "value", "taken_at") VALUES (%s, %s, %s, %s), '
    '(%s, %s, %s, %s), (%s, %s, %s, %s) RETURNING "hms_vital"."id"'
)
# What psycopg2's cursor.query holds after client-side interpolation: literals inline.
MOGRIFIED = (
    'SELECT "hms_patient"."id", "hms_patient"."mrn", "hms_patient"."name" FROM "hms_patient" '
    'WHERE ("hms_patient"."mrn" = \'MRN-004211\' AND "hms_patient"."dob" = \'1980-02-03\'::date '
    "AND \"hms_patient\".\"active\" = true) LIMIT 21 /*controller='patients',route='patients/%3Cpk%3E'*/"
)
SAVEPOINT = 'SAVEPOINT "s140234_x1"'
# A wide SELECT with select_related (8 tables of 40 columns: ~10 KiB), over the main cache's limit.
WIDE_SELECT = (
    "SELECT "
    + ", ".join(f'"t{t}"."column_number_{c}"' for t in range(8) for c in range(40))
    + ' FROM "t0" '
    + " ".join(f'INNER JOIN "t{t}" ON ("t0"."ref_{t}_id" = "t{t}"."id")' for t in range(1, 8))
    + ' WHERE "t0"."id" IN (%s, %s) ORDER BY "t0"."id" LIMIT 50'
)
KEYS = {
    "django default": ":1:patient:12345:summary",
    "cache_page": (
        ":1:views.decorators.cache.cache_page..GET.5f4dcc3b5aa765d61d8327deb882cf99."
        "d41d8cd98f00b204e9800998ecf8427e.en-us.UTC"
    ),
    "phi shapes": "appt:2024-01-31T10:00:00Z:patient:john.doe@example.com:MRN-004211",
}


_scale = 1.0  # --quick: fewer calls per repeat and fewer repeats
_repeat = 7


def _best_us(func: Callable[[], object] | str, number: int) -> float:
    number = max(1, int(number * _scale))
    return min(timeit.repeat(func, number=number, repeat=_repeat)) / number * 1e6


_rows: list[dict[str, object]] = []
_section = ""


def _header(text: str) -> None:
    global _section
    _section = text
    print(text)


def _row(name: str, us: float) -> None:
    _rows.append({"section": _section, "name": name, "us": round(us, 3)})
    print(f"  {name:<44} {us:9.2f} µs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Micro-benchmarks of the pure signal functions.")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, 3 repeats")
    args = parser.parse_args(argv)
    global _scale, _repeat
    if args.quick:
        _scale, _repeat = 0.1, 3
    print(f"Python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}")
    _row("calibration: `for i in range(1000): pass`", _best_us("for _ in range(1000): pass", 2_000))

    _header(f"fingerprint_sql (typical SELECT: {len(DJANGO_SELECT)} chars)")
    for name, sql in (
        ("select", DJANGO_SELECT),
        ("bulk insert", DJANGO_INSERT),
        ("mogrified + sqlcommenter", MOGRIFIED),
        ("savepoint", SAVEPOINT),
    ):
        cold = _best_us(lambda sql=sql: _fingerprint._fingerprint_uncached(sql), 2_000)
        _row(f"{name}: cold (cache miss)", cold)
        fingerprint_sql(sql)
        _row(f"{name}: hot (cache hit)", _best_us(lambda sql=sql: fingerprint_sql(sql), 200_000))

    # The ORM builds the statement string anew for every query: an equal string, another object
    # (its hash is computed again). The copy alone is timed as the baseline.
    copy = _best_us(lambda: WIDE_SELECT[:-1] + WIDE_SELECT[-1], 20_000)
    _row(f"wide select ({len(WIDE_SELECT)} chars): new copy only", copy)
    _row(
        "wide select: per execution (new copy)",
        _best_us(lambda: fingerprint_sql(WIDE_SELECT[:-1] + WIDE_SELECT[-1]), 200) - copy,
    )

    _header("mask_sql_literals")
    for name, sql in (("select (no literals)", DJANGO_SELECT), ("mogrified + sqlcommenter", MOGRIFIED)):
        _row(f"{name}: cold", _best_us(lambda sql=sql: _sql_mask._mask(sql), 2_000))
        mask_sql_literals(sql)
        _row(f"{name}: hot", _best_us(lambda sql=sql: mask_sql_literals(sql), 200_000))

    _header("key_pattern")
    learned = _key_pattern.KeyPatterns()  # what the live hooks call (cache_hooks.PATTERNS)
    for name, key in KEYS.items():
        _row(f"{name}: cold", _best_us(lambda key=key: _key_pattern._analyze(key, None).fill(), 5_000))
        key_pattern(key)
        _row(f"{name}: hot", _best_us(lambda key=key: key_pattern(key), 200_000))
        learned.pattern(key)
        _row(f"{name}: hot, KeyPatterns", _best_us(lambda key=key: learned.pattern(key), 200_000))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"python": platform.python_version(), "rows": _rows}, handle, indent=2)


if __name__ == "__main__":
    main()
