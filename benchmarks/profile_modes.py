"""Where the CPU goes in a gunicorn worker under load: py-spy sampling, summarized per request.

The runner (``benchmarks/run.py``) attaches ``py-spy record --nonblocking --format raw`` to every
worker of a mode's server while it drives one endpoint, then calls :func:`summarize` on the collapsed
stacks. A sample is one look at a thread that was running (py-spy skips idle threads), so
``samples / rate`` is CPU time; divided by the requests served in the window it is CPU per request.

Three views (all in microseconds of CPU per request):

* ``layers`` — every sample goes to the layer of its innermost frame that is not the standard
  library (stdlib frames count for their caller: ``socket.send`` under the exporter is export cost):
  the app (Django, psycopg, redis-py, the sample views, gunicorn) or the telemetry (OpenTelemetry
  instrumentation, SDK/API, export = exporter + protobuf + requests/urllib3, the agent, wrapt).
* ``functions`` — the same attribution at function granularity (self time, stdlib callees included).
* ``agent_inclusive`` — each agent function (``hms_otel_agent``, not its sample app) with the time of
  the samples that have it on the stack and no application frame (Django, psycopg, redis-py, the
  sample app) below it: its own work and the telemetry it calls, but not the application work a
  wrapper wraps (an ORM or cache-API wrapper's Django call). Stock work the agent calls on the way
  counts too: the ``Span.end`` hook includes the SDK's own ``end``, the SQL hook the contrib one,
  the export thread the exporter.

``python benchmarks/profile_modes.py FILE... --rate 250 --requests N`` summarizes saved raw files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
_STDLIB = sysconfig.get_paths()["stdlib"].rstrip("/") + "/"

APP_LAYERS = ("django", "psycopg", "redis-py", "sample app", "gunicorn")
TELEMETRY_LAYERS = ("otel instrumentation", "otel sdk/api", "otel export", "agent", "wrapt")

_LAYER_RULES: tuple[tuple[str, str], ...] = (
    ("/hms_otel_agent/sample/", "sample app"),
    ("/hms_otel_agent/", "agent"),
    ("/opentelemetry/instrumentation/", "otel instrumentation"),
    ("/opentelemetry/exporter/", "otel export"),
    ("/opentelemetry/proto/", "otel export"),
    ("/google/protobuf/", "otel export"),
    ("/requests/", "otel export"),
    ("/urllib3/", "otel export"),
    ("/charset_normalizer/", "otel export"),
    ("/idna/", "otel export"),
    ("/opentelemetry/", "otel sdk/api"),
    ("/wrapt/", "wrapt"),
    ("/django/", "django"),
    ("/psycopg/", "psycopg"),
    ("/psycopg_binary/", "psycopg"),
    ("/psycopg2/", "psycopg"),
    ("/redis/", "redis-py"),
    ("/gunicorn/", "gunicorn"),
)


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int

    @property
    def layer(self) -> str:
        return layer_of(self.file)

    @property
    def short(self) -> str:
        path = self.file
        for marker in ("/site-packages/", "/hms_otel_agent/"):
            if marker in path:
                path = ("hms_otel_agent/" if marker == "/hms_otel_agent/" else "") + path.split(marker, 1)[1]
                break
        return f"{self.func} ({path})"


def layer_of(path: str) -> str:
    """The layer a source file belongs to; 'stdlib' for the standard library, 'other' otherwise."""
    for marker, layer in _LAYER_RULES:
        if marker in path:
            return layer
    in_lib = "/lib/python3" in path and "-packages/" not in path
    if path.startswith((_STDLIB, "<")) or in_lib:
        return "stdlib"
    return "other"


def parse(lines: Iterable[str]) -> Iterator[tuple[list[Frame], int]]:
    """py-spy raw (collapsed) lines -> (frames root first, sample count)."""
    for raw in lines:
        raw = raw.rstrip("\n")
        if not raw:
            continue
        stack, _, count = raw.rpartition(" ")
        try:
            samples = int(count)
        except ValueError:
            continue
        frames = []
        for text in stack.split(";"):
            match = _FRAME.match(text)
            if match:  # py-spy's "process N:..." / "thread ..." prefixes do not match
                frames.append(Frame(match["func"], match["file"], int(match["line"])))
        if frames:
            yield frames, samples


def _attributed(frames: list[Frame]) -> Frame | None:
    """The innermost frame that is not the standard library (stdlib time counts for its caller)."""
    for frame in reversed(frames):
        if frame.layer != "stdlib":
            return frame
    return None


# The threads that export (the SDK's and the agent's batch processors, the metric reader).
_EXPORT_THREADS = ("BatchProcessor.worker", "BoundedBatchSpanProcessor._run", "_ticker")


def _export_part(frames: list[Frame]) -> str:
    """What an export-thread sample was doing: encoding (and the Resource hash the OTLP encoder
    computes per span), the HTTP request (requests/urllib3/http.client), or the rest."""
    funcs = [f.func for f in frames]
    files = [f.file for f in frames]
    if "Resource.__hash__" in funcs:
        return "encode: Resource.__hash__ (per span)"
    if any("_encoder" in path or "/proto/common/" in path for path in files):
        return "encode: spans/metrics to protobuf"
    if any(layer_of(path) == "otel export" and "/exporter/" not in path for path in files) or any(
        "/http/client.py" in path for path in files
    ):
        return "HTTP request (requests, urllib3)"
    return "other (batching, locks, context)"


def summarize(paths: Iterable[str], rate_hz: float, requests: int) -> dict[str, Any]:
    """Collapse py-spy raw files into CPU microseconds per request, by layer and by function."""
    layers: Counter[str] = Counter()
    export: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    function_layer: dict[str, str] = {}
    agent_inclusive: Counter[str] = Counter()
    total = 0
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for frames, samples in parse(handle):
                total += samples
                frame = _attributed(frames)
                layer = frame.layer if frame is not None else "stdlib"
                layers[layer] += samples
                if frame is not None:
                    functions[frame.short] += samples
                    function_layer[frame.short] = layer
                if any(f.func.endswith(_EXPORT_THREADS) for f in frames):
                    export[_export_part(frames)] += samples
                seen = set()
                for f in reversed(frames):  # leaf first: stop at the first application frame
                    frame_layer = f.layer
                    if frame_layer in APP_LAYERS:
                        break
                    if frame_layer == "agent" and f.short not in seen:
                        seen.add(f.short)
                        agent_inclusive[f.short] += samples
    per_request = 1e6 / rate_hz / max(requests, 1)

    def us(counter: Counter[str], limit: int | None = None) -> dict[str, float]:
        return {k: round(v * per_request, 1) for k, v in counter.most_common(limit)}

    app = sum(layers[name] for name in APP_LAYERS)
    telemetry = sum(layers[name] for name in TELEMETRY_LAYERS)
    return {
        "rate_hz": rate_hz,
        "requests": requests,
        "samples": total,
        "cpu_us_per_request": round(total * per_request, 1),
        "app_us_per_request": round(app * per_request, 1),
        "telemetry_us_per_request": round(telemetry * per_request, 1),
        "layers": us(layers),
        "export_thread": us(export),
        "functions": {
            name: {"us": value, "layer": function_layer[name]} for name, value in us(functions, 400).items()
        },
        "agent_inclusive": us(agent_inclusive, 60),
    }


def compare(
    base: dict[str, Any], other: dict[str, Any], top: int = 15, key: str = "functions"
) -> list[dict[str, Any]]:
    """Telemetry functions whose self time per request differs most between two summaries."""
    names = set(base[key]) | set(other[key])
    rows = []
    for name in names:
        b = base[key].get(name, {"us": 0.0, "layer": ""})
        o = other[key].get(name, {"us": 0.0, "layer": ""})
        layer = o["layer"] or b["layer"]
        if layer not in TELEMETRY_LAYERS:
            continue
        rows.append(
            {
                "function": name,
                "layer": layer,
                "base_us": b["us"],
                "us": o["us"],
                "diff_us": round(o["us"] - b["us"], 1),
            }
        )
    rows.sort(key=lambda r: -abs(r["diff_us"]))
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarize py-spy raw profiles per request.")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--rate", type=float, required=True, help="py-spy --rate used")
    parser.add_argument("--requests", type=int, required=True, help="requests served while sampling")
    args = parser.parse_args(argv)
    json.dump(summarize(args.files, args.rate, args.requests), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
