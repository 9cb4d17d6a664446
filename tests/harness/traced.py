"""The agent's pipeline inside the test process, exporting to memory.

For tests of instrumentation and processors on real PostgreSQL, Redis and Django (in-process
via ``django_app``): spans arrive in an InMemorySpanExporter through a SimpleSpanProcessor,
so they are there as soon as the span ends. Instrumentation is global to the process, so it is
installed once per session; `use_settings` swaps the settings the detectors see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from hms_otel_agent import config, instrument, pipeline
from hms_otel_agent.agent import default_detectors
from hms_otel_agent.signals.vocabulary import TEMPLATE_SCOPE


class Traced:
    def __init__(self, **settings: Any) -> None:
        self.base_settings = dataclasses.replace(config.load({}).settings, live_log=False, **settings)
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.pipeline = pipeline.build(
            self.base_settings,
            detectors=default_detectors(),
            extra_span_processors=[SimpleSpanProcessor(self.exporter)],
            span_exporters=[],
            metric_readers=[self.reader],
        ).install()
        self.tracer_provider = self.pipeline.tracer_provider
        self.tracer = self.tracer_provider.get_tracer("tests")
        instrument.install(self.base_settings, self.tracer_provider, self.pipeline.meter_provider)

    # -- settings -----------------------------------------------------------------------------

    @contextmanager
    def use_settings(self, **changes: Any) -> Iterator[config.Settings]:
        processor = self.pipeline.signal_processor
        previous = processor.settings
        processor.settings = dataclasses.replace(self.base_settings, **changes)
        try:
            yield processor.settings
        finally:
            processor.settings = previous

    # -- reading what was exported --------------------------------------------------------------

    def clear(self) -> None:
        self.exporter.clear()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.SERVER]

    def children_of(self, span: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.parent is not None and s.parent.span_id == span.context.span_id]

    def descendants_of(self, span: ReadableSpan) -> list[ReadableSpan]:
        """Children, and their children through template render spans (a page's queries run
        under the template that made them)."""
        found = []
        for child in self.children_of(span):
            found.append(child)
            if child.instrumentation_scope is not None and child.instrumentation_scope.name == TEMPLATE_SCOPE:
                found.extend(self.descendants_of(child))
        return found

    def events(self, span: ReadableSpan, name: str | None = None) -> list[dict[str, Any]]:
        return [dict(e.attributes or {}) for e in span.events if name is None or e.name == name]

    def request(
        self, path: str, method: str = "get", client: Any = None, **kwargs: Any
    ) -> tuple[Any, ReadableSpan]:
        """Run one request through Django's test client (or `client`, e.g. a logged-in one);
        return (response, its server span)."""
        from django.test import Client

        self.clear()
        client = client if client is not None else Client(raise_request_exception=False)
        response = getattr(client, method)(path, **kwargs)
        servers = self.server_spans()
        assert len(servers) == 1, [s.name for s in self.spans()]
        return response, servers[0]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points
