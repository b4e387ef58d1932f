#!/usr/bin/env bash
# Cold starts and overload (issue 18, `make coldstart`): balancing algorithms over 4 mock
# executors that keep at most WARM runtimes warm each, then the per-executor cap under 2×
# overload. Everything runs on 127.0.0.1; loadtest spawns the proxy and the mocks.
#
# Table 1 (cold starts): per algorithm, open loop at RATE req/s; each request names a
# runtime (x-opr-runtime-id rt-1..rt-RUNTIMES, Zipf popularity ZIPF, seeded); each mock
# keeps WARM runtimes warm (least recently used evicted) and a cold one costs COLD_MS ms,
# every request SERVICE_MS ms. Phase 1 measures cold-start rate, latency and executor
# shares; then executor 4 stops and phase 2 measures which runtimes moved to another
# executor (its primary, the one that answered it most, changed, among the runtimes
# answered at least MOVED_MIN times in each phase; ideal 25 %). Every algorithm also
# follows the proxy's optimistic warm mark (a runtime stays where a worker last sent it
# until the next health round), so HEALTH_MS, the health interval, matters: see
# loadtest/README.md, "Cold starts and overload".
#
# Table 2 (cap + queue): 4 mocks that run CAP_MOCK_CONCURRENCY requests at once for
# CAP_SERVICE_MS ms each (capacity 4 × M / S), offered CAP_LOAD × that; the proxy with and
# without OPR_PROXY_EXECUTOR_CONCURRENCY=CAP (queue CAP_QUEUE, timeout CAP_QUEUE_TIMEOUT ms).
#
# ROUNDS rounds, the order of the algorithms (and of the cap configurations) rotating per
# round; prints every run, then medians [min–max] (target/coldstart/rows keeps the rows).
# An algorithm or variable the proxy does not know (exit 2 at start) is reported and skipped.
#
# Usage: bash loadtest/scripts/coldstart.sh
#   env: ALGORITHMS="random round-robin least-request p2c affinity" ROUNDS=3 DURATION=8
#        WARMUP=1.5 RATE=1000 CONNS=128 RUNTIMES=100 ZIPF=1.0 SEED=1 WARM=48 COLD_MS=50
#        SERVICE_MS=20 SETTLE=1 MOVED_MIN=30 HEALTH_MS=1000 CORES=1 PROXY_ENV="K=V ..."
#        TABLES="cold cap"
#        OPR_BIN=path/to/opr-proxy NO_BUILD=1
#        CAP_ALGORITHM=p2c CAP=4 CAP_QUEUE=32 CAP_QUEUE_TIMEOUT=100 CAP_SERVICE_MS=10
#        CAP_MOCK_CONCURRENCY=4 CAP_LOAD=2 CAP_CONNS=256 CAP_DURATION=3
set -euo pipefail

# shellcheck source=loadtest/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALGORITHMS="${ALGORITHMS:-random round-robin least-request p2c affinity}"
TABLES="${TABLES:-cold cap}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-1.5}"
RATE="${RATE:-1000}"
CONNS="${CONNS:-128}"
RUNTIMES="${RUNTIMES:-100}"
ZIPF="${ZIPF:-1.0}"
SEED="${SEED:-1}"
WARM="${WARM:-48}"
COLD_MS="${COLD_MS:-50}"
SERVICE_MS="${SERVICE_MS:-20}"
SETTLE="${SETTLE:-1}"
MOVED_MIN="${MOVED_MIN:-30}"
HEALTH_MS="${HEALTH_MS:-1000}"
CORES="${CORES:-1}"
PROXY_ENV="${PROXY_ENV:-}"
CAP_ALGORITHM="${CAP_ALGORITHM:-p2c}"
CAP="${CAP:-4}"
CAP_QUEUE="${CAP_QUEUE:-32}"
CAP_QUEUE_TIMEOUT="${CAP_QUEUE_TIMEOUT:-100}"
CAP_SERVICE_MS="${CAP_SERVICE_MS:-10}"
CAP_MOCK_CONCURRENCY="${CAP_MOCK_CONCURRENCY:-4}"
CAP_LOAD="${CAP_LOAD:-2}"
CAP_CONNS="${CAP_CONNS:-256}"
CAP_DURATION="${CAP_DURATION:-3}"
EXECUTORS=4
OUT_DIR="${OUT_DIR:-$ROOT/target/coldstart}"

setup
build
if [[ -z "${NO_BUILD:-}" ]]; then
    (cd "$ROOT" && "$CARGO" build --release -p opr-loadtest --bin coldstart-table) >&2 ||
        die "cargo build failed"
fi
mkdir -p "$OUT_DIR"
ROWS="$OUT_DIR/rows"
: >"$ROWS"
read -r -a ALGS <<<"$ALGORITHMS"
read -r -a EXTRA_ENV <<<"$PROXY_ENV"

# run_loadtest LOG ARGS...: one loadtest invocation, bounded in time; its COLDSTART line.
run_loadtest() {
    local log="$1"
    shift
    local env_args=() kv
    for kv in "${EXTRA_ENV[@]}"; do env_args+=(--proxy-env "$kv"); done
    timeout 180 "$BIN/loadtest" --mode open --scenario ping --executors "$EXECUTORS" \
        --proxy-bin "${OPR_BIN:-$BIN/opr-proxy}" --out "$TMP" --warmup "$WARMUP" --timeout 5 \
        --runtimes "$RUNTIMES" --zipf "$ZIPF" --seed "$SEED" \
        --cores "$CORES" --proxy-env "OPR_PROXY_HEALTHCHECK_INTERVAL=$HEALTH_MS" \
        "${env_args[@]}" "$@" \
        >"$log" 2>&1 || true
    { grep '^COLDSTART' "$log" || true; } | tail -n 1 | sed 's/^COLDSTART //'
}

# why LOG: the reason a run gave no result (the proxy's own error line when it refused to start).
why() {
    { grep -m1 '^opr-proxy: ' "$1" || grep -m1 'loadtest:' "$1" || echo "no result (log $1)"; } |
        cut -c1-160
}

echo "coldstart: $EXECUTORS mock executors, $RUNTIMES runtimes (Zipf $ZIPF, seed $SEED), $WARM warm" \
    "per executor, cold start $COLD_MS ms, service $SERVICE_MS ms; open loop $RATE req/s over" \
    "$CONNS connections, ${WARMUP} s warm-up + ${DURATION} s per phase, executor $EXECUTORS stopped" \
    "for phase 2; health rounds every $HEALTH_MS ms, $CORES proxy worker(s);" \
    "$ROUNDS rounds; $(nproc) CPUs, $(uname -r), $(date -u '+%F %H:%M UTC');" \
    "busy before: $(cpu_busy)"

if [[ " $TABLES " == *" cold "* ]]; then
    printf '%-5s %-14s %8s %8s %8s %8s %9s %10s %-24s %8s %7s\n' \
        round algorithm req/s cold_% p50_ms p99_ms p99.9_ms max/mean shares_% moved_% errors
    for round in $(seq "$ROUNDS"); do
        for k in "${!ALGS[@]}"; do
            # Rotate the order so no algorithm always runs first.
            a="${ALGS[$(((k + round - 1) % ${#ALGS[@]}))]}"
            runlog="$OUT_DIR/cold-$a-$round.log"
            line="$(run_loadtest "$runlog" --rate "$RATE" --connections "$CONNS" \
                --duration "$DURATION" --warm-capacity "$WARM" --cold-start-ms "$COLD_MS" \
                --service-ms "$SERVICE_MS" --stop-executor "$EXECUTORS" --settle "$SETTLE" --moved-min "$MOVED_MIN" \
                --proxy-env "OPR_PROXY_ALGORITHM=$a")"
            if [[ -z "$line" ]]; then
                printf '%-5s %-14s skipped: %s\n' "$round" "$a" "$(why "$runlog")"
                continue
            fi
            echo "table=cold alg=$a round=$round $line" >>"$ROWS"
            printf '%-5s %-14s %8s %8s %8s %8s %9s %10s %-24s %8s %7s\n' "$round" "$a" \
                "$(field rps "$line")" "$(field cold_pct "$line")" "$(field p50_ms "$line")" \
                "$(field p99_ms "$line")" "$(field p999_ms "$line")" \
                "$(field max_share "$line")" "$(field shares "$line")" \
                "$(field moved_pct "$line")" "$(field errors "$line")"
        done
    done
fi

if [[ " $TABLES " == *" cap "* ]]; then
    cap_rate="$(awk -v e="$EXECUTORS" -v m="$CAP_MOCK_CONCURRENCY" -v s="$CAP_SERVICE_MS" \
        -v l="$CAP_LOAD" 'BEGIN { printf "%.0f", l * e * m * 1000 / s }')"
    echo
    echo "cap: $EXECUTORS mocks running $CAP_MOCK_CONCURRENCY requests at once for" \
        "$CAP_SERVICE_MS ms each ($((EXECUTORS * CAP_MOCK_CONCURRENCY * 1000 / CAP_SERVICE_MS)) req/s)," \
        "offered $cap_rate req/s over $CAP_CONNS connections, $CAP_ALGORITHM; cap-$CAP:" \
        "OPR_PROXY_EXECUTOR_CONCURRENCY=$CAP OPR_PROXY_QUEUE_SIZE=$CAP_QUEUE" \
        "OPR_PROXY_QUEUE_TIMEOUT=$CAP_QUEUE_TIMEOUT"
    CONFIGS=(no-cap "cap-$CAP")
    printf '%-5s %-10s %8s %8s %8s %9s %7s %9s %9s %7s %12s\n' round config req/s p50_ms \
        p99_ms p99.9_ms 503s 503_p50 503_p99 other max_inflight
    for round in $(seq "$ROUNDS"); do
        for k in "${!CONFIGS[@]}"; do
            c="${CONFIGS[$(((k + round - 1) % ${#CONFIGS[@]}))]}"
            cap_env=()
            if [[ "$c" != no-cap ]]; then
                cap_env=(--proxy-env "OPR_PROXY_EXECUTOR_CONCURRENCY=$CAP"
                    --proxy-env "OPR_PROXY_QUEUE_SIZE=$CAP_QUEUE"
                    --proxy-env "OPR_PROXY_QUEUE_TIMEOUT=$CAP_QUEUE_TIMEOUT")
            fi
            runlog="$OUT_DIR/cap-$c-$round.log"
            line="$(run_loadtest "$runlog" --rate "$cap_rate" --connections "$CAP_CONNS" \
                --duration "$CAP_DURATION" --service-ms "$CAP_SERVICE_MS" \
                --mock-concurrency "$CAP_MOCK_CONCURRENCY" \
                --proxy-env "OPR_PROXY_ALGORITHM=$CAP_ALGORITHM" "${cap_env[@]}")"
            if [[ -z "$line" ]]; then
                printf '%-5s %-10s skipped: %s\n' "$round" "$c" "$(why "$runlog")"
                continue
            fi
            echo "table=cap alg=$c round=$round $line" >>"$ROWS"
            printf '%-5s %-10s %8s %8s %8s %9s %7s %9s %9s %7s %12s\n' "$round" "$c" \
                "$(field rps "$line")" "$(field p50_ms "$line")" "$(field p99_ms "$line")" \
                "$(field p999_ms "$line")" "$(field shed "$line")" \
                "$(field shed_p50_ms "$line")" "$(field shed_p99_ms "$line")" \
                "$(field other_errors "$line")" "$(field mock_max_inflight "$line")"
            inflight="$(field mock_max_inflight "$line")"
            if [[ "$c" != no-cap && "$inflight" =~ ^[0-9]+$ ]] && ((inflight > CAP)); then
                log "warning: an executor had $inflight requests in flight with cap $CAP:" \
                    "this proxy does not apply OPR_PROXY_EXECUTOR_CONCURRENCY"
            fi
        done
    done
fi

echo
echo "medians [min–max] over the rounds (rows: $ROWS):"
echo
"$BIN/coldstart-table" "$ROWS"
