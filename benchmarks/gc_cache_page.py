"""The cache-heavy page in-process: CPU and garbage collection per request, three modes.

``python benchmarks/gc_cache_page.py [--redis-url URL] [--requests N] [--rounds R]``

One "request" is a SERVER span with 50 Django ``cache.get`` hits on Django's RedisCache (real
Redis) under it — the shape of ``/patients/cached/`` without HTTP, Django's request handling
or the database. Each mode runs in a fresh process (instrumentation is process-wide), the modes
alternate for ``--rounds`` rounds, and each process reports its CPU time per request (all
threads, so the export thread counts) and what ``gc.callbacks`` saw: collections per request by
generation and the time spent in them. No exporter does any I/O: spans go to a no-op exporter
behind the mode's batch processor.

* ``none``  — no tracing;
* ``sdk``   — a plain ``TracerProvider`` + ``BatchSpanProcessor`` and the contrib Redis
  instrumentation (what ``opentelemetry-instrument`` sets up for this page);
* ``agent`` — ``pipeline.build`` and ``instrument.install`` with the default settings (a
  ``cache.get`` span per call with the Redis ``GET`` span under it).

Add ``--agent-env NAME=VALUE`` to run the agent mode with a setting, e.g.
``HMS_OTEL_CACHE_COMMAND_SPANS=false``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CALLS = 50


def _child(mode: str, redis_url: str, requests: int) -> dict[str, Any]:
    import gc
    import time

    import django
    from django.conf import settings

    settings.configure(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}},
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    class NullExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    provider: Any = None
    if mode == "sdk":
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=100_000))
        RedisInstrumentor().instrument(tracer_provider=provider)
        django.setup()
    elif mode == "agent":
        import dataclasses

        from hms_otel_agent import config, instrument, pipeline
        from hms_otel_agent.agent import default_detectors
        from hms_otel_agent.instrument import django_cache

        agent_settings = dataclasses.replace(config.load().settings, live_log=False)
        built = pipeline.build(
            agent_settings, default_detectors(), span_exporters=[("null", NullExporter())], metric_readers=[]
        ).install()
        provider = built.tracer_provider
        instrument.install(agent_settings, provider, built.meter_provider)
        import redis  # noqa: F401  (the post-import hook instruments it)

        django.setup()
        django_cache.install(agent_settings, provider)
    else:
        django.setup()
    from django.core.cache import cache

    for i in range(CALLS):
        cache.set(f"patient:{i}:summary", {"id": i, "name": "x" * 40}, 3600)
    tracer = provider.get_tracer("opentelemetry.instrumentation.django") if provider else None

    def request() -> None:
        if tracer is None:
            for i in range(CALLS):
                cache.get(f"patient:{i}:summary")
            return
        with tracer.start_as_current_span("GET /patients/cached/", kind=SpanKind.SERVER) as span:
            for i in range(CALLS):
                cache.get(f"patient:{i}:summary")
            span.set_attribute("http.route", "patients/cached/")

    for _ in range(50):  # warm-up
        request()
    counts = [0, 0, 0]
    seconds = [0.0, 0.0, 0.0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            counts[info["generation"]] += 1
            seconds[info["generation"]] += time.perf_counter() - started[0]

    gc.collect()
    gc.callbacks.append(on_gc)
    cpu = time.process_time()
    for _ in range(requests):
        request()
    if provider is not None:
        provider.force_flush()
    cpu = time.process_time() - cpu
    gc.callbacks.remove(on_gc)
    return {
        "cpu_us_per_request": cpu / requests * 1e6,
        "collections_per_request": [c / requests for c in counts],
        "gc_us_per_request": sum(seconds) / requests * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("HMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.redis_url, args.requests)))
        return 0
    results: dict[str, list[dict[str, Any]]] = {"none": [], "sdk": [], "agent": []}
    for round_index in range(args.rounds):
        modes = list(results)
        modes = modes[round_index % 3 :] + modes[: round_index % 3]
        for mode in modes:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            if mode == "agent":
                env.update(item.split("=", 1) for item in args.agent_env)
            command = [sys.executable, __file__, "--child", mode, "--redis-url", args.redis_url]
            command += ["--requests", str(args.requests)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{CALLS} Django cache.get per request on RedisCache, {args.requests} requests x {args.rounds} rounds"
    )
    print(f"{'mode':<8}{'CPU us/request':>16}{'gc us/request':>15}   collections per request (gen 0 / 1 / 2)")
    for mode, runs in results.items():
        cpu = statistics.median(r["cpu_us_per_request"] for r in runs)
        gc_us = statistics.median(r["gc_us_per_request"] for r in runs)
        collections = [statistics.median(r["collections_per_request"][g] for r in runs) for g in range(3)]
        print(f"{mode:<8}{cpu:>16.0f}{gc_us:>15.0f}   " + " / ".join(f"{c:.3f}" for c in collections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
