#!/usr/bin/env bash
# A/B of opr-proxy builds: `bash loadtest/scripts/ab.sh BIN_A BIN_B [BIN...]` runs every
# scenario against each binary in turn (fresh process per run, one worker on CPU 0, two
# fast mocks and the generator on CPU 1, as in compare.sh), ROUNDS times, alternating, and
# prints the median proxy CPU µs/request, req/s, p99 and peak RSS per binary and scenario.
# Use it to decide a change by measurement: copy target/release/opr-proxy aside, rebuild
# with the change, compare the two files. Alternation makes a noisy minute on a shared
# machine hit every binary alike; compare medians, not single rounds.
#
# Env: SCENARIOS="ping:256 download-64k:256 upload-1m:256" ROUNDS=3 DURATION=6 WARMUP=1
#      BASE_PORT=19380 NO_BUILD=1 (skip building the generator and mocks)
#      RING_OPS=1: also count, with `perf stat` on the proxy for DURATION seconds after the
#      warm-up, io_uring submissions, poll arms (a receive that found no data and waits)
#      and io_uring_enter calls per request (needs perf and tracepoint access).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 2)) || die "usage: ab.sh BIN_A BIN_B [BIN...] (opr-proxy binaries)"
for b in "$@"; do [[ -x "$b" ]] || die "$b is not an executable"; done
SCENARIOS="${SCENARIOS:-ping:256 download-64k:256 upload-1m:256}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-6}"
BASE_PORT="${BASE_PORT:-19380}"
SECRET="ab-$$"

setup
if [[ -z "${NO_BUILD:-}" ]]; then
    (cd "$ROOT" && "$CARGO" build --release -p opr-loadtest --bin loadtest --bin mock-executor) >&2 ||
        die "cargo build failed"
fi
cpu_layout
M1=$((BASE_PORT + 1)) M2=$((BASE_PORT + 2)) P=$((BASE_PORT + 10))
require_free "$M1" "$M2" "$P"
start_mocks "$M1" "$M2"

declare -A CPU RPS P99 HWM SUB ARM ENTER
RING_EVENTS="io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,syscalls:sys_enter_io_uring_enter"
# count EVENT FILE: the count perf stat -x, wrote for EVENT.
count() { awk -F, -v e="$1" '$3 == e { print $1 }' "$2" 2>/dev/null | head -n 1; }
# per_request COUNT RPS: COUNT / (RPS × DURATION), or NA.
per_request() { awk -v c="${1:-}" -v r="${2:-}" -v d="$DURATION" 'BEGIN { if (c == "" || r == "" || r == "NA" || r == 0) print "NA"; else printf "%.2f", c / (r * d) }'; }
for round in $(seq "$ROUNDS"); do
    for sc in $SCENARIOS; do
        scenario="${sc%%:*}" conns="${sc##*:}"
        for i in $(seq $#); do
            bin="${!i}"
            OPR_BIN="$bin" start_opr_proxy "$P" "$SECRET" "127.0.0.1:$M1,127.0.0.1:$M2"
            perf_out="$TMP/perf-$round-$i" perf_pid=""
            if [[ -n "${RING_OPS:-}" ]]; then
                (sleep "${WARMUP:-1}" && perf stat -x, -e "$RING_EVENTS" -p "$OPR_PID" -o "$perf_out" -- sleep "$DURATION") >/dev/null 2>&1 &
                perf_pid=$!
            fi
            line="$(loadtest_closed "http://127.0.0.1:$P" "$scenario" "$conns" "$DURATION" --proxy-pid "$OPR_PID" || true)"
            if [[ -n "$perf_pid" ]]; then
                wait "$perf_pid" || true
                rps="$(field rps "$line")"
                SUB["$i|$sc"]+="$(per_request "$(count io_uring:io_uring_submit_req "$perf_out")" "$rps") "
                ARM["$i|$sc"]+="$(per_request "$(count io_uring:io_uring_poll_arm "$perf_out")" "$rps") "
                ENTER["$i|$sc"]+="$(per_request "$(count syscalls:sys_enter_io_uring_enter "$perf_out")" "$rps") "
            fi
            hwm="$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$OPR_PID/status" 2>/dev/null || echo NA)"
            stop_pids "$OPR_PID"
            sleep 1 # let the stopped proxy's sockets drain before the next one binds the port
            key="$i|$sc"
            CPU[$key]+="$(field proxy_cpu_us "$line") "
            RPS[$key]+="$(field rps "$line") "
            P99[$key]+="$(field p99_ms "$line") "
            HWM[$key]+="${hwm:-NA} "
            log "  round $round $scenario × $conns $bin: rps=$(field rps "$line") p99=$(field p99_ms "$line") ms cpu=$(field proxy_cpu_us "$line") µs/req peak RSS ${hwm:-NA} KiB"
        done
    done
done

echo
echo "$(nproc) CPUs, Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'); $ROUNDS rounds × ${DURATION} s, medians (all rounds in brackets)"
echo
if [[ -n "${RING_OPS:-}" ]]; then
    echo "| scenario | conns | binary | proxy CPU µs/req | req/s | p99 ms | peak RSS MiB | submissions/req | poll arms/req | io_uring_enter/req |"
    echo "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|"
else
    echo "| scenario | conns | binary | proxy CPU µs/req | req/s | p99 ms | peak RSS MiB |"
    echo "|---|--:|---|--:|--:|--:|--:|"
fi
for sc in $SCENARIOS; do
    for i in $(seq $#); do
        key="$i|$sc"
        # shellcheck disable=SC2086
        printf '| %s | %s | %s | %s [%s] | %s | %s | %s |' "${sc%%:*}" "${sc##*:}" "${!i}" \
            "$(median ${CPU[$key]})" "$(echo ${CPU[$key]})" "$(median ${RPS[$key]})" \
            "$(median ${P99[$key]})" "$(awk -v k="$(median ${HWM[$key]})" 'BEGIN { printf "%.1f", k / 1024 }')"
        if [[ -n "${RING_OPS:-}" ]]; then
            # shellcheck disable=SC2086
            printf ' %s | %s | %s |' "$(median ${SUB[$key]})" "$(median ${ARM[$key]})" "$(median ${ENTER[$key]})"
        fi
        echo
    done
done
