"""Readers for the stack's files and for docs/attributes.md, shared by the tests in tests/stack.

Nothing here starts a container: the stack is checked as files (compose model, collector,
Jaeger, Tempo, Prometheus and Grafana configurations, the dashboard, docs/stack.md and
scripts/verify-stack.sh), against each other and against the names docs/attributes.md lists.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_TWO_TIER = ROOT / "docker-compose.two-tier.yml"
CONFIG = ROOT / "collector-config"
OTELCOL = CONFIG / "otelcol.yaml"
GATEWAY = CONFIG / "two-tier" / "gateway.yaml"
SAMPLER = CONFIG / "two-tier" / "sampler.yaml"
PROMETHEUS_TWO_TIER = CONFIG / "two-tier" / "prometheus.yml"
JAEGER = CONFIG / "jaeger.yaml"
TEMPO = CONFIG / "tempo.yaml"
PROMETHEUS = CONFIG / "prometheus" / "prometheus.yml"
ALERTS = CONFIG / "prometheus" / "alerts.yml"
DATASOURCES = CONFIG / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = CONFIG / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARDS = CONFIG / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "hms-performance-hints.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VERIFY = ROOT / "scripts" / "verify-stack.sh"
STACK_DOC = ROOT / "docs" / "stack.md"
ATTRIBUTES_DOC = ROOT / "docs" / "attributes.md"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def published(service: str, model: dict[str, Any] | None = None) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)."""
    result = {}
    for entry in (model or compose())["services"][service].get("ports") or []:
        assert isinstance(entry, str), f"{service}: use the short port syntax"
        host_part, _, container = entry.rpartition(":")
        address, _, host_port = host_part.rpartition(":")
        result[int(container)] = (address, int(host_port))
    return result


@cache
def otelcol() -> dict[str, Any]:
    return load_yaml(OTELCOL)


@cache
def gateway() -> dict[str, Any]:
    return load_yaml(GATEWAY)


@cache
def sampler() -> dict[str, Any]:
    return load_yaml(SAMPLER)


# Service attributes an override replaces instead of appending to (compose-spec, merge).
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}


def _unique_key(attribute: str, entry: Any) -> Any:
    """volumes are unique by their target, ports by (ip, target, published, protocol)."""
    if attribute == "volumes":
        return entry.split(":")[1] if isinstance(entry, str) else entry["target"]
    if isinstance(entry, str):
        host, _, container = entry.rpartition(":")
        ip, _, published_port = host.rpartition(":")
        target, _, protocol = container.partition("/")
        return (ip, target, published_port, protocol or "tcp")
    return (entry.get("host_ip", ""), str(entry["target"]), str(entry.get("published", "")), "tcp")


def _merge(base: Any, override: Any, path: tuple[str, ...]) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value, (*path, key)) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if path[0] == "services" and path[2:] in _REPLACED:
            return override
        if len(path) == 3 and path[0] == "services" and path[2] in ("volumes", "ports"):
            entries = {_unique_key(path[2], e): e for e in base}
            entries.update({_unique_key(path[2], e): e for e in override})
            return list(entries.values())
        return [*base, *override]
    return override


def compose_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The application model `docker compose -f base -f override` builds, by the merge rules of
    the Compose Specification for what these files use: mappings merge key by key, sequences
    append, except command, entrypoint and healthcheck.test (replaced) and volumes and ports
    (an entry replaces the one with the same target, or ip/target/published/protocol)."""
    return _merge(base, override, ())


@cache
def compose_two_tier() -> dict[str, Any]:
    return compose_merge(compose(), load_yaml(COMPOSE_TWO_TIER))


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def host_port(address: str) -> tuple[str, int]:
    """'0.0.0.0:4317' / 'http://tempo:3200/x' / 'tempo:4317' -> (host, port)."""
    if "://" in address:
        parts = urlsplit(address)
        assert parts.hostname and parts.port, address
        return parts.hostname, parts.port
    host, _, port = address.rpartition(":")
    return host, int(port)


def ungrafana(text: str) -> str:
    """Grafana provisioning and Collector configs write a literal `$` as `$$`."""
    return text.replace("$$", "$")


# --- docs/attributes.md ---------------------------------------------------------------------------

SPAN_SECTIONS = ("owner spans", "db client spans", "cache spans")
EVENT_SECTION = "finding events"
METRIC_SECTION = "metrics"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | histogram
    unit: str
    attributes: tuple[str, ...]
    prometheus: str  # as the doc's last column writes it


@dataclass
class AttributeDoc:
    span_types: dict[str, str] = field(default_factory=dict)  # attribute -> type (span scope)
    event_types: dict[str, str] = field(default_factory=dict)  # attribute -> type (finding events)
    event_names: set[str] = field(default_factory=set)  # hms.n_plus_one, hms.duplicate_query, ...
    values: dict[str, set[str]] = field(default_factory=dict)  # attribute -> enumerated values
    metrics: dict[str, Metric] = field(default_factory=dict)

    @property
    def metric_attributes(self) -> set[str]:
        return {a for m in self.metrics.values() for a in m.attributes}

    @property
    def span_names(self) -> set[str]:
        """Names that may appear on a span: the span tables plus the metrics' attributes
        (`http.route` is set on server spans by the Django instrumentation)."""
        return set(self.span_types) | self.metric_attributes

    @property
    def all_names(self) -> set[str]:
        return self.span_names | set(self.event_types) | self.event_names


def _tables(section: str) -> list[list[list[str]]]:
    tables, rows = [], []
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    if rows:
        tables.append(rows)
    return tables


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@cache
def attribute_doc() -> AttributeDoc:
    doc = AttributeDoc()
    sections = re.split(r"^## +", ATTRIBUTES_DOC.read_text(), flags=re.M)[1:]
    for section in sections:
        title = section.splitlines()[0].strip().lower()
        body = section.split("\n", 1)[1]
        tables = _tables(body)
        if not tables:
            continue
        header, *rows = tables[0]
        cols = [h.lower() for h in header]
        if title.startswith(METRIC_SECTION):
            for row in rows:
                cell = dict(zip(cols, row, strict=False))
                (name,) = _ticked(cell["name"])
                doc.metrics[name] = Metric(
                    name=name,
                    kind=cell["type"].strip().lower(),
                    unit=(_ticked(cell["unit"]) or [""])[0],
                    attributes=tuple(a for a in _ticked(cell["attributes"]) if "." in a),
                    prometheus=_ticked(cell["prometheus"])[0],
                )
                for attr, values in re.findall(r"`([\w.]+)` \(([^)]*)\)", cell["attributes"]):
                    doc.values.setdefault(attr, set()).update(_ticked(values))
            continue
        if title.startswith(EVENT_SECTION):
            prose = body.split("|", 1)[0]
            doc.event_names.update(n for n in _ticked(prose) if n.startswith("hms."))
            target = doc.event_types
        elif title.startswith(SPAN_SECTIONS):
            target = doc.span_types
        else:
            continue
        for row in rows:
            cell = dict(zip(cols, row, strict=False))
            for name in _ticked(cell["name"]):
                target[name] = cell["type"].strip()
            if cell["name"].strip("`") == "hms.finding.kind":  # a closed list: every kind there is
                doc.values["hms.finding.kind"] = set(_ticked(cell["meaning"]))
    return doc


UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}


def prometheus_base(name: str, unit: str) -> str:
    """OTLP name + unit -> Prometheus base name (dots -> underscores, unit suffix, {annotations}
    dropped), as the collector's Prometheus exporter writes them (UnderscoreEscapingWithSuffixes)."""
    base = re.sub(r"[^A-Za-z0-9_:]", "_", name)
    suffix = "" if not unit or unit.startswith("{") else UNIT_SUFFIXES.get(unit, unit)
    if suffix and not base.endswith("_" + suffix):
        base += "_" + suffix
    return base


def prometheus_names(name: str, kind: str, unit: str) -> set[str]:
    base = prometheus_base(name, unit)
    if kind == "counter":
        return {base + "_total"}
    if kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


def label(attribute: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", attribute)


# --- the semantic conventions, as the opentelemetry-semantic-conventions package writes them -----


def _constant_docs(folder: Path) -> dict[str, str]:
    """attribute name -> the docstring under its constant, for every module in folder."""
    docs = {}
    for module in folder.glob("*_attributes.py"):
        body = ast.parse(module.read_text()).body
        for node, following in zip(body, [*body[1:], None], strict=True):
            value = getattr(node, "value", None)
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(value, ast.Constant):
                doc = ""
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                    doc = str(following.value.value).strip()
                docs[str(value.value)] = doc
    return docs


@cache
def semconv_stable() -> set[str]:
    """Attribute names of the stable semantic conventions."""
    import opentelemetry.semconv.attributes as stable

    return set(_constant_docs(Path(next(iter(stable.__path__)))))


@cache
def semconv_deprecated() -> dict[str, str]:
    """Deprecated attribute name -> its note ("Deprecated: Replaced by `db.query.text`.")."""
    import opentelemetry.semconv._incubating.attributes as incubating

    docs = _constant_docs(Path(next(iter(incubating.__path__))))
    return {name: doc for name, doc in docs.items() if doc.startswith("Deprecated:")}


# --- the span metrics the collector derives -------------------------------------------------------

SPANMETRICS_DEFAULT_LABELS = {"service_name", "span_name", "span_kind", "status_code"}
PROMETHEUS_LABELS = {"job", "instance", "le", "__name__"}
PROMETHEUS_BUILTIN_METRICS = {"up"}


def spanmetrics_connector() -> dict[str, Any]:
    connectors = otelcol()["connectors"]
    (key,) = [k for k in connectors if k.split("/")[0] in ("spanmetrics", "span_metrics")]
    return connectors[key] or {}


def spanmetrics_names() -> set[str]:
    conf = spanmetrics_connector()
    namespace = conf.get("namespace", "traces.span.metrics")
    prefix = f"{namespace}." if namespace else ""
    unit = (conf.get("histogram") or {}).get("unit", "ms")
    names = prometheus_names(prefix + "calls", "counter", "")
    names |= prometheus_names(prefix + "duration", "histogram", unit)
    if (conf.get("events") or {}).get("enabled"):
        names |= prometheus_names(prefix + "events", "counter", "")
    return names


def spanmetrics_dimensions() -> list[str]:
    conf = spanmetrics_connector()
    dims = [d["name"] for d in conf.get("dimensions") or []]
    dims += [d["name"] for d in (conf.get("events") or {}).get("dimensions") or []]
    return dims


def allowed_metrics() -> set[str]:
    doc = attribute_doc()
    names = set(PROMETHEUS_BUILTIN_METRICS) | spanmetrics_names()
    for m in doc.metrics.values():
        names |= prometheus_names(m.name, m.kind, m.unit)
    return names


def allowed_labels() -> set[str]:
    doc = attribute_doc()
    labels = PROMETHEUS_LABELS | SPANMETRICS_DEFAULT_LABELS
    labels |= {label(a) for a in doc.metric_attributes}
    labels |= {label(d) for d in spanmetrics_dimensions()}
    return labels


# --- PromQL and TraceQL found in the stack's files -----------------------------------------------


@dataclass(frozen=True)
class Query:
    where: str
    text: str


def _fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def promql_queries() -> list[Query]:
    found: list[Query] = []
    for group in load_yaml(ALERTS)["groups"]:
        for rule in group["rules"]:
            found.append(Query(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"]))

    def walk_panels(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk_panels(panel.get("panels") or [])
            for target in panel.get("targets") or []:
                ds = target.get("datasource") or panel.get("datasource") or {}
                if ds.get("type") == "prometheus" and target.get("expr"):
                    found.append(Query(f"dashboard panel {panel['title']!r}", target["expr"]))

    walk_panels(dashboard()["panels"])
    for var in dashboard()["templating"]["list"]:
        if (var.get("datasource") or {}).get("type") == "prometheus":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found.append(Query(f"dashboard variable {var['name']}", q))
    for ds in load_yaml(DATASOURCES)["datasources"]:
        for q in ((ds.get("jsonData") or {}).get("tracesToMetrics") or {}).get("queries") or []:
            found.append(
                Query(f"data source {ds['uid']} tracesToMetrics {q['name']!r}", ungrafana(q["query"]))
            )
    for block in _fenced(STACK_DOC.read_text(), "promql"):
        found.append(Query("docs/stack.md", block))
    for q in re.findall(r"prom_positive\s+'([^']+)'", VERIFY.read_text().replace("\\\n", " ")):
        found.append(Query("scripts/verify-stack.sh", q))
    return found


PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


PROMQL_WORDS = {
    # aggregations, functions and keywords used in this repository's queries (and their kin)
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "stddev",
    "stdvar",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp_min",
    "clamp_max",
    "absent",
    "vector",
    "scalar",
    "time",
    "label_replace",
    "label_join",
    "sort",
    "sort_desc",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "label_values",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression selects: every identifier outside strings, label matchers,
    ranges and grouping clauses that is not a PromQL function or keyword."""
    bare = PROMQL_STRING.sub('""', expr)
    bare = re.sub(r"\{[^{}]*\}", "{}", bare)
    bare = re.sub(r"\[[^\[\]]*\]", "[]", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"(label_values\([^,]+),[^)]*\)", r"\1)", bare)
    bare = re.sub(r"\$\w+", " ", bare)  # Grafana variables
    names = set(re.findall(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)", bare))
    return names - PROMQL_WORDS


def promql_labels(expr: str) -> set[str]:
    bare = PROMQL_STRING.sub('""', expr)
    labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", bare))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    labels |= set(re.findall(r"label_values\([^,]+,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", bare))
    return labels


def promql_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of every label matcher."""
    return re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"", expr)


TRACEQL_SPANSET = re.compile(r"\{[^{}]*?(?:\b(?:span|event|resource)\.|\bevent:)[^{}]*\}")


def traceql_queries() -> list[Query]:
    found: list[Query] = []
    for block in _fenced(STACK_DOC.read_text(), "traceql"):
        found.append(Query("docs/stack.md traceql block", block.strip()))
    for path in (STACK_DOC, VERIFY, ALERTS, DATASOURCES, OTELCOL, TEMPO):
        text = path.read_text().replace('\\"', '"')  # the script quotes some inside "..."
        for m in TRACEQL_SPANSET.finditer(text):
            found.append(Query(str(path.relative_to(ROOT)), m.group(0)))
    for text in _dashboard_strings(dashboard()):
        for m in TRACEQL_SPANSET.finditer(text):
            found.append(Query("dashboard", m.group(0)))
    return found


def _dashboard_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _dashboard_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _dashboard_strings(v)]
    return []


TRACEQL_COMPARISON = re.compile(
    r"\b(span|event|resource)\.([A-Za-z_][\w.]*?)\s*(=~|!~|!=|>=|<=|=|>|<)\s*"
    r"(\"[^\"]*\"|true|false|-?\d+(?:\.\d+)?(?:ns|us|ms|s|m|h)?)"
)


# --- aggregation: what a query keeps of series from several collectors ---------------------------

AGGREGATIONS = {
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "stddev",
    "stdvar",
}
PER_COLLECTOR_LABELS = {"collector_instance_id", "instance"}


def _matching_open(text: str, close: int) -> int:
    depth = 0
    for i in range(close, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _matching_close(text: str, open_: int) -> int:
    depth = 0
    for i in range(open_, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _grouping(text: str) -> tuple[str, set[str]] | None:
    """('by'|'without', labels) when text is `by (a, b)` / `without (a)`."""
    m = re.fullmatch(r"\s*(by|without)\s*\(([^()]*)\)\s*", text)
    if not m:
        return None
    return m.group(1), {x.strip() for x in m.group(2).split(",") if x.strip()}


def _enclosing_open(text: str, position: int) -> int:
    """Index of the '(' whose group contains position, or -1."""
    depth = 0
    for i in range(position - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            if depth == 0:
                return i
            depth -= 1
    return -1


def _aggregation_at(text: str, open_: int) -> tuple[str, set[str]] | None:
    """For the group opened at open_: ('by'|'without', labels) when it is the argument list of an
    aggregation (`sum by (a) (...)`, `sum(...) by (a)`, `sum(...)`), else None."""
    before = text[:open_].rstrip()
    grouping = None
    if before.endswith(")"):  # sum by (a) ( ...
        clause_open = _matching_open(before, len(before) - 1)
        keyword = re.search(r"\b(by|without)\s*$", before[:clause_open])
        if not keyword:
            return None
        grouping = _grouping(before[keyword.start() :])
        before = before[: keyword.start()].rstrip()
    function = re.search(r"([A-Za-z_]\w*)\s*$", before)
    if not function or function.group(1) not in AGGREGATIONS:
        return None
    if grouping is None:  # sum( ... ) by (a), or no grouping at all
        close = _matching_close(text, open_)
        after = re.match(r"\s*(by|without)\s*\([^()]*\)", text[close + 1 :])
        grouping = _grouping(after.group(0)) if after else ("by", set())
    return grouping


def unaggregated_selectors(expr: str) -> list[str]:
    """Metric names in expr whose series reach the result with their collector_instance_id (or
    instance) label: not inside an aggregation (sum, topk, ...) that groups it away. A series
    per collector would show, or compare, a part of the traffic instead of all of it."""
    bare = PROMQL_STRING.sub(lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)
    bare = re.sub(r"\{[^{}]*\}", lambda m: "{" + " " * (len(m.group(0)) - 2) + "}", bare)
    bare = re.sub(r"\[[^\[\]]*\]", lambda m: "[" + " " * (len(m.group(0)) - 2) + "]", bare)
    found = []
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)", bare):
        name = m.group(1)
        if name in PROMQL_WORDS or bare[m.end() :].lstrip().startswith("("):
            continue  # a function or keyword
        if re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*$", bare[: m.start()]):
            continue  # a label of a grouping clause
        position, kept = m.start(), True
        while kept:
            open_ = _enclosing_open(bare, position)
            if open_ < 0:
                break
            grouping = _aggregation_at(bare, open_)
            if grouping is not None:
                mode, labels = grouping
                kept = (
                    bool(labels & PER_COLLECTOR_LABELS)
                    if mode == "by"
                    else not labels >= PER_COLLECTOR_LABELS
                )
            position = open_
        if kept:
            found.append(name)
    return found
