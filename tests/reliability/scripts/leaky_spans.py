"""Run by test_load.py under hms-otel-run: an application that starts request-like spans (each
with a child, as a DB query would have) and never ends them. Prints, as JSON, how much state
the agent kept and how the process's memory grew; and, for comparison, how much the same
state takes when nothing evicts it."""

from __future__ import annotations

import gc
import json
import sys

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from hms_otel_agent import agent
from hms_otel_agent.processors.grouping import _OWNER, _State
from hms_otel_agent.signals.records import OwnerActivity


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def leak(count: int) -> None:
    tracer = trace.get_tracer("leaky-app")
    for i in range(count):
        request = tracer.start_span(f"GET /leak/{i % 50}", kind=SpanKind.SERVER)
        child_context = trace.set_span_in_context(request)
        tracer.start_span("SELECT", context=child_context, kind=SpanKind.CLIENT)
        # neither is ended; the application drops its references


def main() -> None:
    count = int(sys.argv[1])
    built = agent.current_pipeline()
    assert built is not None, "the agent did not start"
    processor = built.signal_processor
    leak(2000)  # warm up allocator pools and caches
    gc.collect()
    before = rss_kib()
    leak(count)
    gc.collect()
    growth = rss_kib() - before
    tracked, evicted = len(processor._open), processor.evicted
    # The same state kept without a bound, for scale.
    unbounded_before = rss_kib()
    kept = {i: _State(_OWNER, None, OwnerActivity(name=f"GET /leak/{i % 50}")) for i in range(count)}
    unbounded = rss_kib() - unbounded_before
    del kept
    print(
        json.dumps({"tracked": tracked, "evicted": evicted, "growth_kib": growth, "unbounded_kib": unbounded})
    )


main()
