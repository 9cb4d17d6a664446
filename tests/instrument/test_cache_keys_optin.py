"""HMS_OTEL_CAPTURE_CACHE_KEYS: raw keys are exported only when the setting is on.

Instrumentation is global to a process, so each setting runs in a fresh interpreter: the
setting comes from the environment, Django's LocMemCache and redis-py on a real Redis.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.processes import run

TESTS_DIR = str(Path(__file__).resolve().parents[1])
KEY = "patient:MRN-000123:summary"

SCRIPT = f"""
import json, os, sys
sys.path.insert(0, {TESTS_DIR!r})
from hms_otel_agent import config
from harness.traced import Traced

traced = Traced(capture_cache_keys=config.load().settings.capture_cache_keys)
import django
from django.conf import settings
settings.configure(
    CACHES={{"default": {{"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}}},
    INSTALLED_APPS=[],
)
django.setup()
import redis
from django.core.cache import cache

client = redis.Redis.from_url(os.environ["REDIS_URL"])
with traced.tracer.start_as_current_span("job"):
    cache.get({KEY!r})
    cache.get_many([{KEY!r}, "patient:MRN-000124:summary"])
    client.get(":1:" + {KEY!r})
client.close()
spans = [
    {{"name": s.name, "attributes": {{k: v for k, v in s.attributes.items() if k.startswith("hms.cache")}}}}
    for s in traced.spans() if s.name != "job"
]
print(json.dumps(spans))
"""


def run_script(redis_url: str, capture: str | None) -> list[dict[str, Any]]:
    env = {"REDIS_URL": redis_url}
    if capture is not None:
        env["HMS_OTEL_CAPTURE_CACHE_KEYS"] = capture
    done = run([sys.executable, "-c", SCRIPT], env=env, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("capture", [None, "false"])
def test_keys_stay_in_the_process_by_default(redis_url: str, capture: str | None) -> None:
    spans = run_script(redis_url, capture)
    assert [s["name"] for s in spans] == ["cache.get", "cache.get_many", "GET"]
    assert all("hms.cache.key" not in s["attributes"] for s in spans)
    assert "MRN" not in json.dumps(spans)
    assert {s["attributes"]["hms.cache.key_pattern"] for s in spans} == {"patient:{mrn}:summary"}


def test_keys_are_exported_when_opted_in(redis_url: str) -> None:
    spans = run_script(redis_url, "true")
    assert [(s["name"], s["attributes"]["hms.cache.key"]) for s in spans] == [
        ("cache.get", KEY),
        ("cache.get_many", f"{KEY} patient:MRN-000124:summary"),
        ("GET", f":1:{KEY}"),
    ]
    assert {s["attributes"]["hms.cache.key_pattern"] for s in spans} == {"patient:{mrn}:summary"}
