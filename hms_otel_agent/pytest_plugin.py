"""pytest plugin ``hms_otel``: fail tests that run N+1 queries (or other findings), with the fix.

Inactive unless ``--hms-otel`` is given: without it the plugin only registers its options and
marker, and imports neither Django nor the agent. With it, the agent's pipeline runs in the test
process with an in-memory exporter, and

* every test's call phase runs inside an owner span (``test <nodeid>``), so queries run directly
  in the test body are grouped like the queries of a request (test-client requests get their own
  request span underneath, as in production); queries outside it (fixtures, the session's
  set-up) get no implicit unit of work: they are no test's;
* the live span processor hands each owner's findings to the plugin (``on_findings``);
* a test whose owners got a finding of a kind in ``--hms-otel-fail-on`` (default ``n_plus_one``)
  fails with the finding's hint (what, where, the fix); a finding that took in one of those kinds
  (a repeated group with its member query's N+1, `Finding.includes`) fails it too;
* ``@pytest.mark.hms_otel_allow("hms.Encounter.patient")`` allows findings in one test, and
  ``with allow("hms.Encounter.patient"):`` in a block of code (patterns: relation, key pattern,
  kind, model or finding fingerprint, ``fnmatch`` wildcards; no pattern: everything);
* ``--hms-otel-threshold N`` sets the N+1 threshold (2 is common in test suites);
* ``--hms-otel-report=PATH`` writes the findings report of the whole run (``.json``: JSON,
  anything else: Markdown). With pytest-xdist the tests run in worker processes: each sends what it
  aggregated to the controller when it finishes (``workeroutput``), and the controller writes one
  merged report at PATH and prints the summary line.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import pytest

from hms_otel_agent.printable import printable
from hms_otel_agent.signals.registry import FINDING_KINDS
from hms_otel_agent.signals.vocabulary import TEST_ATTRIBUTE

if TYPE_CHECKING:
    from hms_otel_agent.report.model import Aggregator
    from hms_otel_agent.report.otlp import SpanData
    from hms_otel_agent.signals.records import Finding, OwnerActivity

ALLOW_MARKER = "hms_otel_allow"
ALLOW_ATTRIBUTE = "hms.pytest.allow"  # on owner spans opened by allow(); never leaves the process
KINDS = FINDING_KINDS
DEFAULT_FAIL_ON = "n_plus_one"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hms-otel", "hms-otel: fail tests that run N+1 queries")
    group.addoption(
        "--hms-otel",
        action="store_true",
        dest="hms_otel",
        default=False,
        help="run the tests under the hms-otel agent (in memory) and fail tests with findings",
    )
    group.addoption(
        "--hms-otel-fail-on",
        dest="hms_otel_fail_on",
        default=DEFAULT_FAIL_ON,
        metavar="KINDS",
        help=f"finding kinds that fail a test, comma-separated, or 'none' (default {DEFAULT_FAIL_ON}; "
        f"kinds: {', '.join(KINDS)})",
    )
    group.addoption(
        "--hms-otel-threshold",
        dest="hms_otel_threshold",
        type=int,
        default=None,
        metavar="N",
        help="repetitions that make an N+1 (default: HMS_OTEL_N_PLUS_ONE_THRESHOLD, else 5; "
        "2 is common in tests)",
    )
    group.addoption(
        "--hms-otel-report",
        dest="hms_otel_report",
        default=None,
        metavar="PATH",
        help="write the findings report of the whole run to PATH (.json: JSON, else Markdown; with "
        "pytest-xdist, one report merged from every worker)",
    )


def _fail_on(raw: str) -> frozenset[str]:
    kinds = {k.strip() for k in raw.split(",") if k.strip()}
    if kinds == {"none"}:
        return frozenset()
    if kinds == {"all"}:
        return frozenset(KINDS)
    unknown = kinds - set(KINDS)
    if unknown or not kinds:
        raise pytest.UsageError(
            f"--hms-otel-fail-on: unknown kind(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"expected a comma-separated list of {', '.join(KINDS)}, or 'all' or 'none'"
        )
    return frozenset(kinds)


_state_key = pytest.StashKey["_State"]()
_controller_key = pytest.StashKey["_Controller"]()
_active: _State | None = None  # the running state, for allow()
OUTPUT_KEY = "hms_otel"  # in an xdist worker's workeroutput: what it aggregated


def _is_xdist_controller(config: pytest.Config) -> bool:
    """The pytest-xdist controller (it runs no tests; its workers do), as xdist itself decides."""
    return (
        not hasattr(config, "workerinput")
        and getattr(config.option, "dist", "no") != "no"
        and not config.getoption("collectonly", False)
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{ALLOW_MARKER}(*patterns): hms-otel findings this test may have (relation like "
        "'hms.Encounter.patient', cache key pattern, kind, model or fingerprint; fnmatch wildcards; "
        "no pattern: all)",
    )
    if not config.getoption("hms_otel", False):
        return
    if _is_xdist_controller(config):
        config.stash[_controller_key] = _Controller(config)
        return
    global _active
    state = _State(config)
    config.stash[_state_key] = state
    _active = state


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker: hand what it aggregated to the controller (xdist sends workeroutput when
    this hook returns)."""
    config = session.config
    state = config.stash.get(_state_key, None)
    output = getattr(config, "workeroutput", None)
    if state is not None and output is not None:
        output[OUTPUT_KEY] = {
            "aggregator": state.aggregator.state(),
            "tests_with_findings": state.tests_with_findings,
        }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The xdist controller: a worker finished; merge what it aggregated."""
    controller = node.config.stash.get(_controller_key, None)
    if controller is not None:
        controller.merge(getattr(node, "workeroutput", None) or {}, str(getattr(node, "gateway", node).id))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _active
    controller = config.stash.get(_controller_key, None)
    if controller is not None:
        controller.write_report()
        return
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    try:
        state.write_report()
    finally:
        state.close()
        if _active is state:
            _active = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    state = item.config.stash.get(_state_key, None)
    if state is None:
        return (yield)
    patterns = _marker_patterns(item)
    error: BaseException | None = None
    with state.test_span(item, patterns) as collected:
        try:
            result = yield
        except BaseException as exc:
            error = exc
    failing = state.finish(item, collected, patterns)
    if error is not None:
        if failing:
            item.add_report_section("call", "hms-otel", _message(failing))
        raise error
    if failing and getattr(item, "_excinfo", None) is None:  # a unittest failure is reported already
        pytest.fail(_message(failing), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state: _State | _Controller | None = config.stash.get(_state_key, None) or config.stash.get(
        _controller_key, None
    )
    if state is None:
        return
    summary = state.aggregator.summary
    findings = len(state.aggregator.groups)
    line = (
        f"hms-otel: {findings} distinct finding{'' if findings == 1 else 's'} in "
        f"{state.tests_with_findings} of {summary.tests} tests"
    )
    if summary.requests:
        line += f" (and the {summary.requests} request{'' if summary.requests == 1 else 's'} they made)"
    if state.report_path:
        line += f"; report: {printable(state.report_path)}"
    terminalreporter.write_line(line)


@contextmanager
def allow(*patterns: str) -> Iterator[None]:
    """Allow findings of code run inside the block (``with allow("hms.Encounter.patient"):``).

    The block runs in an owner span of its own: its queries are grouped there, and findings on it
    (or on requests made inside it) that match a pattern do not fail the test.
    """
    state = _active
    if state is None:
        yield
        return
    from opentelemetry import trace

    span = state.tracer.start_span("hms_otel.allow", attributes={ALLOW_ATTRIBUTE: list(patterns) or ["*"]})
    with trace.use_span(span, end_on_exit=True):
        yield


# --- internals ------------------------------------------------------------------------------------


def _marker_patterns(item: pytest.Item) -> list[str]:
    patterns: list[str] = []
    for marker in item.iter_markers(ALLOW_MARKER):
        patterns.extend([str(a) for a in marker.args] or ["*"])
    return patterns


def allowed(finding: Finding, patterns: Iterable[str]) -> bool:
    values = [
        finding.relation,
        finding.key_pattern,
        finding.kind,
        *finding.includes,
        finding.model,
        finding.fingerprint,
    ]
    values = [v for v in values if v]
    return any(p == "*" or any(fnmatch.fnmatchcase(v, p) for v in values) for p in patterns)


def _message(failing: Sequence[Finding]) -> str:
    lines = [f"hms-otel: {len(failing)} finding{'s' if len(failing) != 1 else ''} in this test:"]
    example = ""
    for f in failing:
        lines.append(f"  [{f.kind}] {printable(f.hint or f.statement)}")
        if f.fix:
            lines.append(f"      fix: {printable(f.fix)}")
        example = example or printable(f.relation or f.key_pattern or f.kind)
    lines.append(
        f'Allow a known case with @pytest.mark.{ALLOW_MARKER}("{example}") or '
        f'`with hms_otel_agent.pytest_plugin.allow("{example}"):`.'
    )
    return "\n".join(lines)


def _collector() -> Any:
    """A span processor keeping the spans that end while a test runs (the SDK is imported only
    when the plugin is active)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Collector(SpanProcessor):
        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._spans: list[Any] | None = None

        def start(self) -> None:
            with self._lock:
                self._spans = []

        def stop(self) -> list[Any]:
            with self._lock:
                spans, self._spans = self._spans or [], None
            return spans

        def on_end(self, span: Any) -> None:
            with self._lock:
                if self._spans is not None and len(self._spans) < 200_000:
                    self._spans.append(span)

        def shutdown(self) -> None:
            self.stop()

    return Collector()


def _chain(
    first: Callable[[OwnerActivity, list[Finding]], None] | None,
    then: Callable[[OwnerActivity, list[Finding]], None],
) -> Callable[[OwnerActivity, list[Finding]], None]:
    """Both listeners (the agent's live log, then the plugin's)."""
    if first is None:
        return then

    def both(activity: OwnerActivity, findings: list[Finding]) -> None:
        first(activity, findings)
        then(activity, findings)

    return both


def span_data(span: Any) -> SpanData:
    """An SDK ReadableSpan as the plain record the report reads."""
    from opentelemetry.trace import SpanKind

    from hms_otel_agent.report.otlp import EventData, SpanData

    kinds = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4}
    kinds[SpanKind.CONSUMER] = 5

    def plain(attributes: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}

    context, parent, scope = span.context, span.parent, span.instrumentation_scope
    return SpanData(
        trace_id=format(context.trace_id, "032x"),
        span_id=format(context.span_id, "016x"),
        parent_span_id=format(parent.span_id, "016x") if parent is not None else "",
        name=span.name,
        kind=kinds.get(span.kind, 0),
        scope=scope.name if scope is not None else "",
        start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
        attributes=plain(span.attributes),
        events=[EventData(e.name, plain(e.attributes), e.timestamp or 0) for e in span.events],
        resource=plain(span.resource.attributes) if span.resource is not None else {},
    )


def _settings(config: pytest.Config) -> Any:
    import dataclasses

    from hms_otel_agent import config as hms_config

    threshold = config.getoption("hms_otel_threshold")
    if threshold is not None and threshold < 2:
        raise pytest.UsageError("--hms-otel-threshold: expected an integer >= 2")
    from hms_otel_agent import agent

    loaded = hms_config.load()
    agent.report_problems(loaded)
    hms_config.clean_environ(loaded)  # before the pipeline's SDK objects read it
    changes: dict[str, Any] = {"live_log": False}
    if threshold is not None:
        changes["n_plus_one_threshold"] = threshold
    return dataclasses.replace(loaded.settings, **changes)


def _write(report: Any, path: str) -> None:
    from hms_otel_agent.report.render import render

    fmt = "json" if path.endswith(".json") else "markdown"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        render(report, fmt, out)


class _Controller:
    """The xdist controller's side: merges its workers' aggregates, writes the one report."""

    def __init__(self, config: pytest.Config) -> None:
        from hms_otel_agent.report.model import RECORDED, Aggregator

        _fail_on(str(config.getoption("hms_otel_fail_on") or DEFAULT_FAIL_ON))  # usage errors here too
        self.aggregator = Aggregator(RECORDED, [], _settings(config))
        self.report_path: str | None = config.getoption("hms_otel_report") or None
        self.tests_with_findings = 0

    def merge(self, output: dict[str, Any], worker: str) -> None:
        data = output.get(OUTPUT_KEY)
        if not data:  # a worker that crashed, or ran without the plugin active
            note = f"worker {worker} sent no results (it crashed or stopped early): its findings are missing"
            self.aggregator.notes.append(note)
            return
        self.aggregator.merge_state(data["aggregator"])
        self.tests_with_findings += int(data["tests_with_findings"])

    def write_report(self) -> None:
        if self.report_path:
            _write(self.aggregator.report(), self.report_path)


class _State:
    def __init__(self, config: pytest.Config) -> None:
        from hms_otel_agent import agent, instrument, pipeline
        from hms_otel_agent.report.model import RECORDED, Aggregator

        self.fail_on = _fail_on(str(config.getoption("hms_otel_fail_on") or DEFAULT_FAIL_ON))
        self.settings = _settings(config)
        from hms_otel_agent.signals.http_privacy import HttpPrivacy

        self.privacy = HttpPrivacy.from_settings(self.settings)  # the report's URLs, as exported
        # An xdist worker writes nothing: the controller writes the merged report.
        worker = hasattr(config, "workerinput")
        self.report_path: str | None = None if worker else (config.getoption("hms_otel_report") or None)
        self.collector = _collector()
        self.pipeline: Any = None
        # The findings of each owner span, as the live processor hands them over (on_findings):
        # (trace id, span id) -> findings; findings over many requests (no owner span) apart.
        self._lock = threading.Lock()
        self._found: dict[tuple[int, int], list[Finding]] = {}
        self._aggregate: list[Finding] = []
        existing = agent.current_pipeline()  # pytest itself run under hms-otel-run
        if existing is not None:
            processor = existing.signal_processor
            processor.settings = self.settings
            processor.on_findings = _chain(processor.on_findings, self.on_findings)
            existing.tracer_provider.add_span_processor(self.collector)
            provider = existing.tracer_provider
        else:
            self.pipeline = pipeline.build(
                self.settings,
                agent.default_detectors(),
                extra_span_processors=[self.collector],
                span_exporters=[],
                metric_readers=[],
                on_findings=self.on_findings,
            ).install()
            provider = self.pipeline.tracer_provider
            instrument.install(self.settings, provider, self.pipeline.meter_provider)
            from opentelemetry import trace

            if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                trace.set_tracer_provider(provider)  # the application's own spans join the tests'
        from hms_otel_agent.instrument import implicit_units

        # Queries outside a test's span are fixtures' and the session's set-up: no test's.
        implicit_units.set_enabled(False)
        self.tracer = provider.get_tracer("hms_otel_agent.pytest")
        self.aggregator: Aggregator = Aggregator(RECORDED, [], self.settings)
        self.tests_with_findings = 0

    def on_findings(self, activity: OwnerActivity, findings: list[Finding]) -> None:
        """The live processor's findings of one owner (called on the thread that ended it)."""
        with self._lock:
            if activity.span_id:
                self._found.setdefault((activity.trace_id, activity.span_id), []).extend(findings)
            else:
                self._aggregate.extend(findings)

    def _take(self, owner: Any) -> list[Finding]:
        with self._lock:
            if owner.aggregate:
                taken, self._aggregate = self._aggregate, []
                return taken
            if owner.span is None:
                return []
            return self._found.pop((int(owner.trace_id, 16), int(owner.span.span_id, 16)), [])

    @contextmanager
    def test_span(self, item: pytest.Item, patterns: list[str]) -> Iterator[list[Any]]:
        from opentelemetry import trace

        collected: list[Any] = []
        self.collector.start()
        attributes: dict[str, Any] = {TEST_ATTRIBUTE: item.nodeid}
        if patterns:
            attributes[ALLOW_ATTRIBUTE] = patterns
        span = self.tracer.start_span(f"test {item.nodeid}", attributes=attributes)
        try:
            with trace.use_span(span, end_on_exit=True):
                yield collected
        finally:
            collected.extend(self.collector.stop())

    def finish(self, item: pytest.Item, spans: list[Any], patterns: list[str]) -> list[Finding]:
        from hms_otel_agent.report.spans import build_owners

        records = [span_data(s) for s in spans]
        allow_of = {r.span_id: r.attributes.get(ALLOW_ATTRIBUTE) or [] for r in records}
        parent_of = {r.span_id: r.parent_span_id for r in records}
        failing: list[Finding] = []
        any_findings = False
        for owner in build_owners(records, read_findings=False, privacy=self.privacy):
            findings = self._take(owner)
            self.aggregator.add(owner, findings)
            if not findings:
                continue
            any_findings = True
            owner_patterns = list(patterns)
            span_id = owner.span.span_id if owner.span is not None else ""
            seen = 0
            while span_id and seen < 1000:
                owner_patterns.extend(allow_of.get(span_id, []))
                span_id = parent_of.get(span_id, "")
                seen += 1
            failing.extend(
                f
                for f in findings
                if (f.kind in self.fail_on or self.fail_on.intersection(f.includes))
                and not allowed(f, owner_patterns)
            )
        if any_findings:
            self.tests_with_findings += 1
        with self._lock:  # owners that ended outside this test's spans: not this test's
            self._found.clear()
            self._aggregate.clear()
        return failing

    def write_report(self) -> None:
        if self.report_path:
            _write(self.aggregator.report(), self.report_path)

    def close(self) -> None:
        if self.pipeline is not None:
            with suppress(Exception):
                self.pipeline.shutdown(1000)
