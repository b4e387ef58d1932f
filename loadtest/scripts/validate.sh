#!/usr/bin/env bash
# Validates the load generator against wrk: both drive the same target closed loop with
# the same connections, alone on CPU 1; the target (opr-proxy with 1 worker and two fast
# mock executors) shares CPU 0, so it is the bottleneck and not the generator. Prints
# both throughputs, their ratio per round and the ratio of the medians (must be within 10 %).
#
# Env: CONNS="64 256" DURATION=6 ROUNDS=5 BASE_PORT=19180 NO_BUILD=1 MOCK_ENGINE=fast
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS="${CONNS:-64 256}"
DURATION="${DURATION:-6}"
ROUNDS="${ROUNDS:-5}"
BASE_PORT="${BASE_PORT:-19180}"
SECRET="validate-$$"

setup
build
ensure_cmd wrk wrk
cpu_layout
# The whole target on one CPU, the generator alone on the other: a generator that were
# slower (or faster) than wrk would show, instead of trading CPU with the mocks.
MOCK_CPU="$PROXY_CPU"

M1=$((BASE_PORT + 1)) M2=$((BASE_PORT + 2)) P=$((BASE_PORT + 10))
require_free "$M1" "$M2" "$P"
start_mocks "$M1" "$M2"
start_opr_proxy "$P" "$SECRET" "127.0.0.1:$M1,127.0.0.1:$M2"
URL="http://127.0.0.1:$P"

run_wrk() {
    # wrk -t1: one generator thread, like loadtest's default --threads 1.
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$1" -d"${DURATION}s" \
        -H "Authorization: Bearer $SECRET" "$URL/v1/ping" 2>&1 |
        tee -a "$TMP/wrk.log" | awk '/^Requests\/sec:/ {print $2}'
}

run_ours() {
    local line
    line="$(loadtest_closed "$URL" ping "$1" "$DURATION" --warmup 0)"
    [[ -n "$line" ]] || die "loadtest printed no result (see $TMP/loadtest.log; KEEP_TMP=1 keeps it)"
    field rps "$line"
}

echo "validate: wrk vs loadtest, closed loop, GET /v1/ping through opr-proxy"
echo "  target on CPU $PROXY_CPU: opr-proxy (1 worker) + 2 mock executors (${MOCK_ENGINE:-fast});"
echo "  wrk -t1 / loadtest --threads 1 alone on CPU $CLIENT_CPU; ${DURATION} s per run, $ROUNDS rounds, order alternating"
echo "  $(nproc) CPUs, Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'); busy before start: $(cpu_busy)"
printf '%-6s %-6s %12s %12s %8s\n' conns round "wrk req/s" "ours req/s" ratio
status=0
for c in $CONNS; do
    wrks=() ours=()
    for r in $(seq "$ROUNDS"); do
        if ((r % 2)); then
            w="$(run_wrk "$c")"
            o="$(run_ours "$c")"
        else
            o="$(run_ours "$c")"
            w="$(run_wrk "$c")"
        fi
        [[ -n "$w" ]] || die "wrk printed no Requests/sec (see $TMP/wrk.log)"
        wrks+=("$w")
        ours+=("$o")
        printf '%-6s %-6s %12.0f %12.0f %8.3f\n' "$c" "$r" "$w" "$o" "$(awk -v a="$o" -v b="$w" 'BEGIN {print a / b}')"
    done
    mw="$(median "${wrks[@]}")"
    mo="$(median "${ours[@]}")"
    ratio="$(awk -v a="$mo" -v b="$mw" 'BEGIN {printf "%.3f", a / b}')"
    verdict="$(awk -v r="$ratio" 'BEGIN {print (r >= 0.9 && r <= 1.1) ? "PASS" : "FAIL"}')"
    [[ "$verdict" == PASS ]] || status=1
    printf '%-6s %-6s %12.0f %12.0f %8s  %s (within 10 %%)\n' "$c" median "$mw" "$mo" "$ratio" "$verdict"
done
exit "$status"
