#!/usr/bin/env bash
# Verify the observability stack end to end, on a machine with Docker (Compose v2):
#
#   1. docker compose up -d --build --wait      (every service healthy or running)
#   2. demo traffic against the sample app's naive endpoints (N+1 queries, cache reads in loops)
#   3. Jaeger:     GET /api/v3/traces with the attribute filter hms.n_plus_one=true returns a
#                  trace in which a span really carries hms.n_plus_one = true (a boolean)
#      Tempo:      GET /api/search?q={ span.hms.n_plus_one = true } (and the other TraceQL
#                  examples of docs/stack.md) finds traces
#      Prometheus: hms_findings_total{hms_finding_kind="n_plus_one"} and the span metrics have
#                  samples; the collector's own telemetry target is up
#      Grafana:    the provisioned data sources and the "HMS performance hints" dashboard exist
#   4. docker compose down -v                    (always, unless --keep)
#
# --two-tier runs the same checks on the two-tier collectors (docker-compose.two-tier.yml merged
# into docker-compose.yml: a gateway and two sampling-tier replicas), after checking that
# Prometheus scrapes both replicas.
#
# Usage: scripts/verify-stack.sh [--keep] [--no-build] [--two-tier]
# Environment: HMS_VERIFY_TIMEOUT        seconds to wait for data in each backend (default 180)
#              HMS_VERIFY_READY_TIMEOUT  seconds to wait for each endpoint after --wait (default 120)
#              HMS_VERIFY_ROUNDS         rounds of demo traffic (default 5)
#              HMS_STACK_BIND            host address the ports are published on (default 127.0.0.1)
# Exit status: 0 every check passed; 1 a check failed (data did not arrive in time);
#              2 usage or a missing prerequisite; 3 the stack did not come up;
#              4 the sample app did not answer the demo traffic.
set -euo pipefail

cd "$(dirname "$0")/.."

KEEP=0
BUILD=(--build)
TWO_TIER=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    --no-build) BUILD=() ;;
    --two-tier) TWO_TIER=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "verify-stack: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

TIMEOUT=${HMS_VERIFY_TIMEOUT:-180}
READY_TIMEOUT=${HMS_VERIFY_READY_TIMEOUT:-120}
ROUNDS=${HMS_VERIFY_ROUNDS:-5}
HOST=${HMS_STACK_BIND:-127.0.0.1}
[ "$HOST" = "0.0.0.0" ] && HOST=127.0.0.1
APP="http://$HOST:8000"
JAEGER="http://$HOST:16686"
TEMPO="http://$HOST:3200"
PROMETHEUS="http://$HOST:9090"
GRAFANA="http://$HOST:3000"
SERVICE=hms-sample
LOGGED=(app otel-collector jaeger tempo)
if [ "$TWO_TIER" = 1 ]; then
  # every docker compose command below reads both files
  export COMPOSE_FILE=docker-compose.yml:docker-compose.two-tier.yml
  LOGGED+=(otel-sampler)
fi

log() { printf 'verify-stack: %s\n' "$*"; }
fail() { local code=$1; shift; printf 'verify-stack: FAILED: %s\n' "$*" >&2; exit "$code"; }

for tool in docker curl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail 2 "$tool is required"
done
docker compose version >/dev/null 2>&1 || fail 2 "Docker Compose v2 (docker compose) is required"
docker info >/dev/null 2>&1 || fail 2 "no Docker engine answers (docker info failed)"

STARTED=0
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ "$STARTED" = 1 ]; then
    echo "--- docker compose ps ---" >&2
    docker compose ps >&2 || true
    echo "--- last log lines ---" >&2
    docker compose logs --no-color --tail 40 "${LOGGED[@]}" >&2 || true
  fi
  if [ "$STARTED" = 1 ] && [ "$KEEP" = 0 ]; then
    log "docker compose down -v"
    docker compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- JSON checks (python3 reads a response on stdin; exit 0 when it shows what we wait for) ----

# Jaeger /api/v3/traces (OTLP JSON): prints the trace ids with a span whose attribute
# hms.n_plus_one is the boolean true. Exit 1 when there is none.
read -r -d '' JAEGER_CHECK <<'PY' || true
import json, sys
doc = json.load(sys.stdin)
found, typed_wrong = set(), 0
for rs in (doc.get("result") or {}).get("resourceSpans") or []:
    for ss in rs.get("scopeSpans") or []:
        for span in ss.get("spans") or []:
            for attr in span.get("attributes") or []:
                if attr.get("key") != "hms.n_plus_one":
                    continue
                value = attr.get("value") or {}
                if value.get("boolValue") is True:
                    found.add(span.get("traceId"))
                elif "boolValue" not in value:
                    typed_wrong += 1
if typed_wrong:
    print(f"hms.n_plus_one is not a boolean on {typed_wrong} span(s)", file=sys.stderr)
print(" ".join(sorted(str(t) for t in found)))
sys.exit(0 if found else 1)
PY

# Tempo /api/search: prints the number of traces found. Exit 1 when there is none.
read -r -d '' TEMPO_CHECK <<'PY' || true
import json, sys
traces = json.load(sys.stdin).get("traces") or []
print(len(traces))
sys.exit(0 if traces else 1)
PY

# Prometheus /api/v1/query: prints the largest sample value. Exit 1 when no sample is above 0.
read -r -d '' PROM_CHECK <<'PY' || true
import json, sys
doc = json.load(sys.stdin)
values = [float(r["value"][1]) for r in (doc.get("data") or {}).get("result") or []]
print(max(values) if values else "no samples")
sys.exit(0 if doc.get("status") == "success" and any(v > 0 for v in values) else 1)
PY

# RFC 3339 timestamps and unix seconds for the search windows (portable: no GNU date needed).
read -r -d '' TIMES <<'PY' || true
import datetime as dt, sys
now = dt.datetime.now(dt.timezone.utc)
start = now - dt.timedelta(minutes=int(sys.argv[1]))
fmt = "%Y-%m-%dT%H:%M:%SZ"
print(start.strftime(fmt), (now + dt.timedelta(minutes=1)).strftime(fmt),
      int(start.timestamp()), int(now.timestamp()) + 60)
PY

# wait_for DESCRIPTION SECONDS COMMAND...: retry COMMAND every 3 s until it succeeds.
wait_for() {
  local what=$1 limit=$2 deadline output
  shift 2
  deadline=$((SECONDS + limit))
  while true; do
    if output=$("$@" 2>/dev/null); then
      log "ok: $what${output:+ ($output)}"
      return 0
    fi
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 3
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 5 "$1"; }

jaeger_n_plus_one() {
  local t_min t_max
  read -r t_min t_max _ _ < <(python3 -c "$TIMES" 30)
  # Jaeger 2.20 reads the camelCase names; the snake_case ones are their older aliases.
  curl -fsS --max-time 10 -G "$JAEGER/api/v3/traces" \
    --data-urlencode "query.serviceName=$SERVICE" --data-urlencode "query.service_name=$SERVICE" \
    --data-urlencode "query.startTimeMin=$t_min" --data-urlencode "query.start_time_min=$t_min" \
    --data-urlencode "query.startTimeMax=$t_max" --data-urlencode "query.start_time_max=$t_max" \
    --data-urlencode "query.searchDepth=20" --data-urlencode "query.num_traces=20" \
    --data-urlencode 'query.attributes={"hms.n_plus_one":"true"}' \
    | python3 -c "$JAEGER_CHECK"
}

tempo_search() {
  local start end
  read -r _ _ start end < <(python3 -c "$TIMES" 30)
  curl -fsS --max-time 10 -G "$TEMPO/api/search" --data-urlencode "q=$1" \
    --data-urlencode "start=$start" --data-urlencode "end=$end" --data-urlencode "limit=20" \
    | python3 -c "$TEMPO_CHECK"
}

prom_positive() {
  curl -fsS --max-time 10 -G "$PROMETHEUS/api/v1/query" --data-urlencode "query=$1" \
    | python3 -c "$PROM_CHECK"
}

# --- 1. up ---------------------------------------------------------------------------------------
log "docker compose up -d ${BUILD[*]} --wait (first run builds the app image)"
STARTED=1
docker compose up -d "${BUILD[@]}" --wait --wait-timeout 900 || fail 3 "docker compose up --wait failed"
for url in "$APP/health/" "$JAEGER/" "$TEMPO/ready" "$PROMETHEUS/-/ready" "$GRAFANA/api/health"; do
  wait_for "$url" "$READY_TIMEOUT" http_ok "$url" || fail 3 "$url does not answer"
done
wait_for "collector telemetry scraped (up{job=\"otel-collector-internal\"})" "$((READY_TIMEOUT + 30))" \
  prom_positive 'max(up{job="otel-collector-internal"})' || fail 3 "the collector is not up"
if [ "$TWO_TIER" = 1 ]; then
  wait_for "both sampling-tier replicas scraped (up{job=\"otel-sampler-internal\"})" "$((READY_TIMEOUT + 30))" \
    prom_positive 'count(up{job="otel-sampler-internal"} == 1) >= 2' || fail 3 "the sampling tier is not up"
fi

# --- 2. demo traffic -----------------------------------------------------------------------------
NAIVE=(/encounters/ /patients/ /patients/cached/ /stats/ /appointments/schedule/ /notes/
       /patients/records/ /facilities/ /encounters/recent/)
OPTIMIZED=(/encounters/optimized/ /patients/optimized/ /patients/cached/optimized/)
log "demo traffic: $ROUNDS rounds of ${#NAIVE[@]} naive and ${#OPTIMIZED[@]} optimized endpoints, one error"
errors=0
for _ in $(seq "$ROUNDS"); do
  for path in "${NAIVE[@]}" "${OPTIMIZED[@]}"; do
    curl -fsS -o /dev/null --max-time 30 "$APP$path" || { errors=$((errors + 1)); log "error on $path"; }
  done
done
curl -sS -o /dev/null --max-time 30 "$APP/boom/" || true   # a 500: kept by the errors policy
[ "$errors" -eq 0 ] || fail 4 "$errors request(s) of the demo traffic failed"

# --- 3. the findings arrived ---------------------------------------------------------------------
status=0
check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  wait_for "$what" "$TIMEOUT" "$@" || { printf 'verify-stack: not found within %ss: %s\n' "$TIMEOUT" "$what" >&2; status=1; }
}
check "Jaeger /api/v3/traces: traces with hms.n_plus_one=true" jaeger_n_plus_one
check "Tempo: { span.hms.n_plus_one = true }" tempo_search '{ span.hms.n_plus_one = true }'
check "Tempo: { span.hms.db.query_count > 20 }" tempo_search '{ span.hms.db.query_count > 20 }'
check "Tempo: { event:name = \"hms.n_plus_one\" && event.hms.orm.relation = \"hms.Encounter.patient\" }" \
  tempo_search '{ event:name = "hms.n_plus_one" && event.hms.orm.relation = "hms.Encounter.patient" }'
check "Prometheus: hms_findings_total{hms_finding_kind=\"n_plus_one\"}" \
  prom_positive 'sum(hms_findings_total{hms_finding_kind="n_plus_one"})'
check "Prometheus: hms_cache_reads_total" prom_positive 'sum(hms_cache_reads_total)'
check "Prometheus: span metrics (traces_span_metrics_calls_total)" \
  prom_positive 'sum(traces_span_metrics_calls_total{span_kind="SPAN_KIND_SERVER"})'
for uid in prometheus tempo jaeger; do
  check "Grafana data source uid=$uid" http_ok "$GRAFANA/api/datasources/uid/$uid"
done
check "Grafana dashboard \"HMS performance hints\"" http_ok "$GRAFANA/api/dashboards/uid/hms-performance-hints"

if [ "$status" -ne 0 ]; then
  fail 1 "some findings did not arrive (see above)"
fi
log "all checks passed"
