#!/usr/bin/env bash
# Load test of `queuepool serve` with PostgreSQL behind it (the tutorial's benchmark).
#
# Runs wrk at 32 connections for 10 s on GET /health and GET /items/{id} against the
# release binary, and reports for each: requests/s, p50 and p99 latency (wrk --latency),
# the server's peak RSS (VmHWM) and the connections opened during the run (the pool's
# own counter from /pool, cross-checked with pg_stat_database.sessions of a database
# used by nothing else).
#
# Usage: scripts/load.sh            (PostgreSQL on 127.0.0.1:5432, user postgres)
# Environment:
#   PG_URL       server to use, any database on it   [postgres://postgres@127.0.0.1:5432/postgres]
#   CONNECTIONS  wrk connections                     [32]
#   DURATION     wrk duration per endpoint           [10s]
#   THREADS      wrk threads                         [2]
#   WARMUP       warm-up per endpoint, not measured  [2s]
#   PORT         port of the service                 [18765]
#   QUEUEPOOL_BIN  binary to test                    [target/release/queuepool, built if missing]
#   POOL_PRESET / POOL_SIZE / MAX_OVERFLOW / ...     passed to the service as usual (default: dev preset)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
PORT=${PORT:-18765}
BIN=${QUEUEPOOL_BIN:-$ROOT/target/release/queuepool}
NAME="qp_load_$$_$RANDOM"
BASE="http://127.0.0.1:$PORT"

die() { echo "load.sh: $*" >&2; exit 1; }

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    fi
    command -v wrk >/dev/null || die "wrk is not installed (Debian: apt-get install wrk)"
fi
command -v psql >/dev/null || die "psql is needed (Debian: apt-get install postgresql-client)"
command -v curl >/dev/null || die "curl is needed"
if [ ! -x "$BIN" ]; then
    echo "building the release binary..." >&2
    (cd "$ROOT" && cargo build --release -p queuepool-cli) || die "build failed"
fi

# A database of its own, so that its session counter counts only this run.
psql "$PG_URL" -qAtc "CREATE DATABASE $NAME" >/dev/null || die "cannot create database $NAME on $PG_URL"
DB_URL=$(python3 - "$PG_URL" "$NAME" <<'PY' 2>/dev/null || true
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); q = u.parse_qsl(p.query)
q = [(k, v) for k, v in q if k != "application_name"] + [("application_name", sys.argv[2])]
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], u.urlencode(q), "")))
PY
)
[ -n "$DB_URL" ] || DB_URL="${PG_URL%/*}/$NAME?application_name=$NAME"

LOG=$(mktemp -t queuepool-load.XXXXXX.log)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; fi
    psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

DATABASE_URL="$DB_URL" BIND="127.0.0.1:$PORT" "$BIN" serve >"$LOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -sf "$BASE/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; die "the service exited"; }
    sleep 0.1
done
curl -sf "$BASE/health" >/dev/null || { cat "$LOG" >&2; die "the service did not start"; }

ID=$(curl -sf -X POST "$BASE/items" -H 'content-type: application/json' \
    -d '{"name":"load test item","description":"for wrk","price":9.99}' | python3 -c 'import sys, json; print(json.load(sys.stdin)["id"])')

created() { curl -sf "$BASE/pool" | python3 -c 'import sys, json; print(json.load(sys.stdin)["stats"]["connections_created"])'; }
sessions() { psql "$PG_URL" -qAtc "SELECT sessions FROM pg_stat_database WHERE datname = '$NAME'"; }
backends() { psql "$PG_URL" -qAtc "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$NAME'"; }
field() { awk -v k="$1" '$1 == k { print $2; exit }'; }

printf '\nqueuepool serve, PostgreSQL, wrk -t%s -c%s -d%s --latency (%s cores)\n' "$THREADS" "$CONNECTIONS" "$DURATION" "$(nproc)"
printf 'load average before the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'pool: %s\n\n' "$(grep -o 'pool: preset=.*' "$LOG" | head -1)"
printf '%-14s %10s %9s %9s %9s %10s %12s %10s\n' endpoint req/s p50 p99 errors "RSS peak" "conns opened" "pg sessions"
for path in /health "/items/$ID"; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$BASE$path" >/dev/null
    before_created=$(created); before_sessions=$(sessions)
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$BASE$path")
    after_created=$(created); after_sessions=$(sessions)
    rps=$(echo "$out" | field "Requests/sec:")
    p50=$(echo "$out" | field "50%")
    p99=$(echo "$out" | field "99%")
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ { e = e $0 "; " } END { print (e == "" ? "0" : e) }')
    hwm=$(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$SERVER_PID/status")
    printf '%-14s %10s %9s %9s %9s %10s %12s %10s\n' "$path" "$rps" "$p50" "$p99" "$errors" "$hwm" \
        "$((after_created - before_created))" "$((after_sessions - before_sessions))"
done
echo
echo "pool after the runs: $(curl -sf "$BASE/pool" | python3 -c 'import sys, json; d = json.load(sys.stdin); print(d["status"], "| timeouts", d["stats"]["timeouts"], "| wait p99", round(d["stats"]["wait"]["p99_ms"], 3), "ms, max", round(d["stats"]["wait"]["max_ms"], 1), "ms | held max", round(d["stats"]["usage"]["max_ms"], 1), "ms")')"
echo "server backends with application_name=$NAME while running: $(backends)"

kill -TERM "$SERVER_PID"
status=0; wait "$SERVER_PID" || status=$?
SERVER_PID=
sleep 0.2
echo "after SIGTERM: exit status $status, backends left: $(backends)"
