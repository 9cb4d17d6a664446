"""Cost of the template spans (``instrument/django_templates.py``) and of outbound HTTP client
spans (``instrument/http_client.py``), per render and per call.

Run: ``python benchmarks/micro_http_templates.py``.

Everything runs in this process with the agent's real pipeline (signal processor, detectors,
redaction) and no exporter, inside an owner span, so the numbers are what the request thread
pays: span creation, the hooks, the processor's bookkeeping and the owner's detectors and time
split at its end, shared out over the renders or calls. Instrumented and plain blocks alternate
(the instrumentation is applied and undone between them); the best block counts; a second
plain series gives the A/A noise floor.

1. templates: a page rendering ``{% include %}`` 50 times (51 renders) from Django's locmem
   loader, µs of CPU (``time.thread_time``) per render;
2. HTTP: ``requests.Session.get`` and ``httpx.Client.get`` against the loopback fake FHIR server
   (``hms_otel_agent/demo/fhir_server.py``, no delay), 20 calls under one owner, µs of CPU of
   the calling thread per call (the server's thread is not counted).

Prints results only (no assertions). Options: ``--number``, ``--repeat``, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INCLUDES = 50
CALLS = 20


def _pipeline() -> Any:
    import dataclasses

    from hms_otel_agent import config, pipeline
    from hms_otel_agent.agent import default_detectors

    settings = dataclasses.replace(config.load({}).settings, live_log=False)
    built = pipeline.build(
        settings, detectors=default_detectors(), span_exporters=[], metric_readers=[]
    ).install()
    return settings, built


def _setup_django() -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=[],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "OPTIONS": {
                    "loaders": [
                        (
                            "django.template.loaders.locmem.Loader",
                            {
                                "page.html": "{% for row in rows %}{% include 'row.html' %}{% endfor %}",
                                "row.html": "<li>{{ row.code }}: {{ row.name|upper }}</li>",
                            },
                        )
                    ]
                },
            }
        ],
    )
    django.setup()


def _best_us(func: Callable[[], Any], number: int, per: int) -> float:
    cpu = time.thread_time()
    for _ in range(number):
        func()
    return (time.thread_time() - cpu) / number / per * 1e6


def _alternate(
    run: Callable[[], Any],
    on: Callable[[], None],
    off: Callable[[], None],
    number: int,
    repeat: int,
    per: int,
) -> dict[str, float]:
    plain, plain_again, instrumented = [], [], []
    for _ in range(repeat):
        off()
        plain.append(_best_us(run, number, per))
        on()
        instrumented.append(_best_us(run, number, per))
        off()
        plain_again.append(_best_us(run, number, per))
    best = min(instrumented)
    return {
        "plain": round(min(plain), 2),
        "plain again (A/A)": round(min(plain_again), 2),
        "instrumented": round(best, 2),
        "added": round(best - min(plain), 2),
    }


def templates(tracer: Any, tracer_provider: Any, number: int, repeat: int) -> dict[str, float]:
    from django.template.loader import get_template

    from hms_otel_agent.instrument import django_templates

    page = get_template("page.html")
    rows = [{"code": f"W{i}", "name": f"ward {i}"} for i in range(INCLUDES)]

    def render() -> None:
        with tracer.start_as_current_span("request"):
            page.render({"rows": rows})

    apply = django_templates.install(tracer_provider)
    return _alternate(render, apply, django_templates.uninstall, number, repeat, INCLUDES + 1)


def http(
    settings: Any, tracer: Any, tracer_provider: Any, number: int, repeat: int
) -> dict[str, dict[str, float]]:
    import httpx
    import requests

    from hms_otel_agent.demo.fhir_server import FakeFhirServer
    from hms_otel_agent.instrument import http_client

    results = {}
    with FakeFhirServer(delay_ms=0) as base:
        session = requests.Session()
        client = httpx.Client(timeout=5)

        def with_requests() -> None:
            with tracer.start_as_current_span("request"):
                for index in range(CALLS):
                    session.get(f"{base}/Patient/p{index}", timeout=5)

        def with_httpx() -> None:
            with tracer.start_as_current_span("request"):
                for index in range(CALLS):
                    client.get(f"{base}/Patient/p{index}")

        for name, run, library, apply in (
            ("requests", with_requests, "requests", http_client.instrument_requests),
            ("httpx", with_httpx, "httpx", http_client.instrument_httpx),
        ):
            results[name] = _alternate(
                run,
                lambda apply=apply: apply(settings, tracer_provider, None),
                lambda library=library: http_client.uninstall(library),
                number,
                repeat,
                CALLS,
            )
        client.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cost of template spans and outbound HTTP spans.")
    parser.add_argument("--number", type=int, default=20, help="owners per timed block")
    parser.add_argument("--repeat", type=int, default=7, help="timed blocks per mode")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    _setup_django()
    settings, built = _pipeline()
    tracer_provider = built.tracer_provider
    tracer = tracer_provider.get_tracer("bench")
    results = {
        "python": platform.python_version(),
        f"template render, µs CPU per render ({INCLUDES + 1} per owner)": templates(
            tracer, tracer_provider, args.number, args.repeat
        ),
        **{
            f"{name}.get, µs CPU per call ({CALLS} per owner)": row
            for name, row in http(settings, tracer, tracer_provider, args.number, args.repeat).items()
        },
    }
    for title, row in results.items():
        print(f"{title}: {row}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    built.shutdown(2000)


if __name__ == "__main__":
    main()
