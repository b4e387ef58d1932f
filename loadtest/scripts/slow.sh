#!/usr/bin/env bash
# One slow executor (issue 13): round-robin vs least-request vs p2c through opr-proxy.
#
# Two in-process std mock executors; the first answers one request at a time after
# SLOW_MS ms (capacity 1000/SLOW_MS req/s, requests queue on it under load), the other
# at once. Open loop at each of RATES req/s over CONNS keep-alive connections, DURATION s
# per run, ROUNDS rounds with the algorithm order rotating per round. Prints every run,
# then per rate and algorithm the median p50/p99/p99.9, throughput and the slow
# executor's share of the requests.
#
# Usage: bash loadtest/scripts/slow.sh
#   env: ROUNDS=3 RATES="800 1600" SLOW_MS=2 CONNS=64 DURATION=3 NO_BUILD=1
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"
RATES="${RATES:-800 1600}"
SLOW_MS="${SLOW_MS:-2}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-3}"
ALGORITHMS=(round-robin least-request p2c)

cd "$ROOT"
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -p opr-proxy -p opr-loadtest >&2
fi
OUT="$(mktemp -d "${TMPDIR:-/tmp}/opr-slow.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

echo "slow executor: ${SLOW_MS} ms, one request at a time; open loop, ${CONNS} connections," \
    "${DURATION} s per run, ${ROUNDS} rounds; $(nproc) CPUs, $(uname -r), $(date -u '+%F %H:%M UTC')"
printf '%-6s %-5s %-14s %8s %8s %8s %9s %7s %7s\n' \
    rate round algorithm req/s p50_ms p99_ms p99.9_ms slow fast
for rate in $RATES; do
    for round in $(seq "$ROUNDS"); do
        for k in "${!ALGORITHMS[@]}"; do
            # Rotate the order so no algorithm always runs first.
            a="${ALGORITHMS[$(((k + round - 1) % ${#ALGORITHMS[@]}))]}"
            out="$(timeout 120 target/release/loadtest --mode open --rate "$rate" \
                --scenario ping --mock std --slow-executor "$SLOW_MS" --slow-queue \
                --connections "$CONNS" --duration "$DURATION" \
                --proxy-env "OPR_PROXY_ALGORITHM=$a" --out "$OUT" 2>/dev/null)"
            line="$(grep '^RESULT' <<<"$out")"
            counts="$(grep '^EXECUTORS' <<<"$out")"
            field() { sed -E "s/.* $1=([^ ]+).*/\1/" <<<"$2"; }
            rps="$(field rps "$line")"
            p50="$(field p50_ms "$line")"
            p99="$(field p99_ms "$line")"
            p999="$(field p999_ms "$line")"
            slow="$(field executor-1 "$counts ")"
            fast="$(field executor-2 "$counts ")"
            printf '%-6s %-5s %-14s %8s %8s %8s %9s %7s %7s\n' \
                "$rate" "$round" "$a" "$rps" "$p50" "$p99" "$p999" "$slow" "$fast" |
                tee -a "$OUT/rows"
        done
    done
done

echo
echo "medians over ${ROUNDS} rounds (slow share = slow executor's requests / all):"
printf '%-6s %-14s %8s %8s %8s %9s %10s\n' rate algorithm req/s p50_ms p99_ms p99.9_ms slow_share
for rate in $RATES; do
    for a in "${ALGORITHMS[@]}"; do
        awk -v rate="$rate" -v alg="$a" '
            function median(v, n,   i, j, t) {
                for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] > v[j]; j--) {
                    t = v[j]; v[j] = v[j-1]; v[j-1] = t
                }
                return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            }
            $1 == rate && $3 == alg {
                n++; rps[n] = $4; p50[n] = $5; p99[n] = $6; p999[n] = $7
                share[n] = ($8 + $9) ? $8 / ($8 + $9) : 0
            }
            END {
                printf "%-6s %-14s %8.0f %8.2f %8.2f %9.2f %9.1f%%\n", rate, alg,
                    median(rps, n), median(p50, n), median(p99, n), median(p999, n),
                    100 * median(share, n)
            }' "$OUT/rows"
    done
done
