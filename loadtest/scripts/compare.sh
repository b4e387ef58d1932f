#!/usr/bin/env bash
# `make compare`: the load scenarios against nginx, HAProxy and opr-proxy, each a 1-worker
# round-robin HTTP/1.1 proxy with executor keep-alive, pinned alone to CPU 0; the two mock
# executors and the load generator on CPU 1. ROUNDS rounds; in each, every scenario runs
# every proxy once, in an order rotated per round (a fresh process per row), so a noisy
# minute on a shared machine hits all proxies alike. Prints per row the median over the
# rounds with the spread: req/s, p50/p99/p99.9, proxy CPU µs per request (utime+stime of
# the proxy's processes) and ratios to nginx; then light-load latency and the proxies' RSS
# per idle keep-alive connection.
#
# Env: ROUNDS=3 DURATION=6 (s per row) WARMUP=1 PROXIES="nginx haproxy opr-proxy"
#      SCENARIOS="ping:64 ping:256 ping:1024 download-64k:256 download-1m:256 upload-1m:256 h2c-ping:8"
#      `h2c-ping:C`: small GETs over HTTP/2 with prior knowledge, C connections with
#      H2C_STREAMS (32) concurrent streams each, driven by h2load (nghttp2-client, installed
#      when missing); the proxies listen h2c for that row (nginx `listen … http2`, HAProxy
#      `bind … proto h2`) and still speak HTTP/1.1 to the executors.
#      BASE_PORT=19280 NO_BUILD=1 MOCK_ENGINE=fast|std KEEP_TMP=1 (keep configs and logs)
#      LATENCY_DURATION=5 (s per proxy and round, light-load latency table; 0 skips it)
#      IDLE_CONNS=10000 (idle keep-alive connections per proxy and round; 0 skips the table)
#      POOL=1024 idle executor connections each proxy may keep (nginx `keepalive`,
#      OPR_PROXY_POOL_SIZE; HAProxy keeps idle server connections without a limit). Below the
#      connection count, nginx and opr-proxy close and reopen executor connections all the time.
#      Anchor configurations (loadtest/scripts/anchors.sh): a PROXIES entry `nginx@buffered`
#      runs that candidate; plain `nginx` / `haproxy` run NGINX_BEST / HAPROXY_BEST.
#      ANCHOR_TUNING=1: every candidate of both anchors (PROXIES defaults to all of them,
#      no latency or idle table), then per scenario the candidates ranked and the mapping the
#      rule picks (loadtest/README.md, "Anchor configurations").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/anchors.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-6}"
if [[ -n "${ANCHOR_TUNING:-}" ]]; then
    all=""
    for v in $NGINX_CANDIDATES; do all+="nginx@$v "; done
    for v in $HAPROXY_CANDIDATES; do all+="haproxy@$v "; done
    PROXIES="${PROXIES:-$all}"
    LATENCY_DURATION="${LATENCY_DURATION:-0}"
    IDLE_CONNS="${IDLE_CONNS:-0}"
fi
PROXIES="${PROXIES:-nginx haproxy opr-proxy}"
SCENARIOS="${SCENARIOS:-ping:64 ping:256 ping:1024 download-64k:256 download-1m:256 upload-1m:256 h2c-ping:8}"
H2C_STREAMS="${H2C_STREAMS:-32}"
LATENCY_DURATION="${LATENCY_DURATION:-5}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
BASE_PORT="${BASE_PORT:-19280}"
SECRET="compare-$$"
POOL="${POOL:-1024}"
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"

setup
build
cpu_layout
for p in $PROXIES; do
    anchor="${p%%@*}"
    case "$anchor" in
    nginx) ensure_cmd nginx nginx ;;
    haproxy) ensure_cmd haproxy haproxy ;;
    opr-proxy) [[ "$p" == opr-proxy ]] || die "opr-proxy has no candidates ($p)" ;;
    *) die "unknown proxy $p (nginx, haproxy, opr-proxy, or nginx@CANDIDATE, haproxy@CANDIDATE)" ;;
    esac
    if [[ "$p" == *@* ]]; then
        valid_variant "$anchor" "${p#*@}" || die "$p: candidates are $(anchor_candidates "$anchor")"
    fi
done

# Open files: every process started here inherits the hard limit as its soft limit; the idle
# table needs a descriptor per connection in the generator and in the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576
if ((IDLE_CONNS > 0 && IDLE_CONNS + 2048 > NOFILE)); then
    log "warning: open files limited to $NOFILE (ulimit -Hn): IDLE_CONNS $IDLE_CONNS -> $((NOFILE - 2048))"
    IDLE_CONNS=$((NOFILE - 2048))
fi
NGINX_CONNECTIONS=$((IDLE_CONNS + 4096 > 16384 ? IDLE_CONNS + 4096 : 16384))
HAPROXY_MAXCONN=$((IDLE_CONNS + 1000 > 8000 ? IDLE_CONNS + 1000 : 8000))

[[ " $SCENARIOS " != *" h2c-"* ]] || ensure_cmd h2load nghttp2-client

M1=$((BASE_PORT + 1)) M2=$((BASE_PORT + 2)) P=$((BASE_PORT + 10))
require_free "$M1" "$M2" "$P"
start_mocks "$M1" "$M2"

# variant_of ENTRY KEY: the anchor candidate a PROXIES entry runs for a SCENARIOS entry.
variant_of() {
    local entry="$1" key="$2"
    if [[ "$entry" == *@* ]]; then
        echo "${entry#*@}"
    else
        anchor_variant "$entry" "$key"
    fi
}

# label ENTRY KEY: `nginx (stream)`, `opr-proxy`.
label() {
    local v
    v="$(variant_of "$1" "$2")"
    if [[ -n "$v" ]]; then echo "${1%%@*} ($v)"; else echo "$1"; fi
}

# start_proxy ENTRY KEY: sets PROXY_PIDS (what is killed) and CPU_PIDS (whose CPU time and
# memory count).
start_proxy() {
    local entry="$1" key="$2" variant
    variant="$(variant_of "$entry" "$key")"
    # h2c rows: the anchors listen HTTP/2 with prior knowledge (opr-proxy detects it).
    LISTEN_H2=""
    [[ "$key" != h2c-* ]] || LISTEN_H2=1
    case "${entry%%@*}" in
    nginx)
        write_nginx_conf "$variant"
        taskset -c "$PROXY_CPU" nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" \
            -e "$TMP/nginx/error.log" >"$TMP/nginx/stdout.log" 2>&1 &
        PROXY_PIDS=("$!")
        PIDS+=("$!")
        wait_port "$P" "$!" nginx
        # Master + worker(s); the workers are the master's children.
        local workers
        workers="$( (pgrep -P "${PROXY_PIDS[0]}" || true) | paste -sd, -)"
        [[ -n "$workers" ]] || die "nginx has no worker process"
        CPU_PIDS="${PROXY_PIDS[0]},$workers"
        ;;
    haproxy)
        write_haproxy_cfg "$variant"
        taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
        PROXY_PIDS=("$!")
        PIDS+=("$!")
        wait_port "$P" "$!" haproxy
        # -db: one process, no master/worker split.
        CPU_PIDS="${PROXY_PIDS[0]}"
        ;;
    opr-proxy)
        OPR_PROXY_POOL_SIZE="$POOL" start_opr_proxy "$P" "$SECRET" "127.0.0.1:$M1,127.0.0.1:$M2"
        PROXY_PIDS=("$OPR_PID")
        CPU_PIDS="$OPR_PID"
        ;;
    esac
}

stop_proxy() {
    stop_pids "${PROXY_PIDS[@]}"
    sleep 1 # let sockets of the stopped proxy drain before the next one binds the port
}

# rotate N WORD...: the words rotated left by N (round r starts with the r-th proxy).
rotate() {
    local n="$1"
    shift
    local words=("$@") i
    for ((i = 0; i < ${#words[@]}; i++)); do
        printf '%s ' "${words[$(((i + n) % ${#words[@]}))]}"
    done
}

# Added latency under light load: one connection, one request at a time (no queueing),
# small GETs; the same run straight at a mock executor is the baseline.
latency_run() {
    loadtest_closed "$1" ping 1 "$LATENCY_DURATION" "${@:2}" || true
}

idle_run() {
    taskset -c "$CLIENT_CPU" "$BIN/loadtest" --mode idle --url "http://127.0.0.1:$P" \
        --secret "$SECRET" --proxy-pid "$CPU_PIDS" --connections "$IDLE_CONNS" \
        --timeout "${TIMEOUT:-10}" --hold "${IDLE_HOLD:-1}" 2>>"$TMP/loadtest.log" |
        grep '^RESULT' | tail -n 1 || true
}

declare -A RES LAT IDLE
NA_LINE="RESULT rps=NA p50_ms=NA p99_ms=NA p999_ms=NA errors=NA proxy_cpu_us=NA proxy_cpus_busy_pct=NA"
BUSY_BEFORE="$(cpu_busy)"
STARTED="$(date +%s)"
log "compare: $ROUNDS rounds, closed loop, ${DURATION} s per row (after ${WARMUP:-1} s warm-up), proxies: $PROXIES"
for round in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    order="$(rotate $((round - 1)) $PROXIES)"
    log "round $round of $ROUNDS: $order"
    if [[ "$LATENCY_DURATION" != 0 ]]; then
        LAT["direct|$round"]="$(latency_run "http://127.0.0.1:$M1")"
        log "  direct ping × 1: p50=$(field p50_us "${LAT["direct|$round"]}") µs p99=$(field p99_us "${LAT["direct|$round"]}") µs"
        for proxy in $order; do
            start_proxy "$proxy" ping:1
            LAT["$proxy|$round"]="$(latency_run "http://127.0.0.1:$P" --proxy-pid "$CPU_PIDS")"
            log "  $(label "$proxy" ping:1) ping × 1: p50=$(field p50_us "${LAT["$proxy|$round"]}") µs p99=$(field p99_us "${LAT["$proxy|$round"]}") µs"
            stop_proxy
        done
    fi
    for sc in $SCENARIOS; do
        scenario="${sc%%:*}" conns="${sc##*:}"
        for proxy in $order; do
            start_proxy "$proxy" "$sc"
            if [[ "$scenario" == h2c-ping ]]; then
                line="$(h2load_closed "http://127.0.0.1:$P" "$conns" "$H2C_STREAMS" "$DURATION" "$CPU_PIDS" || true)"
            else
                line="$(loadtest_closed "http://127.0.0.1:$P" "$scenario" "$conns" "$DURATION" --proxy-pid "$CPU_PIDS" || true)"
            fi
            if [[ -z "$line" ]]; then
                log "  $proxy $scenario × $conns: no result (see loadtest.log; KEEP_TMP=1 keeps $TMP)"
                line="$NA_LINE"
            fi
            RES["$proxy|$sc|$round"]="$line"
            log "  $(label "$proxy" "$sc") $scenario × $conns: rps=$(field rps "$line") p99=$(field p99_ms "$line") ms cpu=$(field proxy_cpu_us "$line") µs/req errors=$(field errors "$line")"
            stop_proxy
        done
    done
    if ((IDLE_CONNS > 0)); then
        for proxy in $order; do
            start_proxy "$proxy" "ping:$IDLE_CONNS"
            IDLE["$proxy|$round"]="$(idle_run)"
            log "  $(label "$proxy" "ping:$IDLE_CONNS") idle × $IDLE_CONNS: $(field kib_per_conn "${IDLE["$proxy|$round"]}") KiB/conn (opened $(field opened "${IDLE["$proxy|$round"]}"))"
            stop_proxy
        done
    fi
done

# vals FIELD KEY_PREFIX ARRAY: the field of every round, in round order ("NA" kept).
vals() {
    local f="$1" prefix="$2" r out=()
    local -n arr="$3"
    for r in $(seq "$ROUNDS"); do
        local v
        v="$(field "$f" "${arr["$prefix|$r"]:-}")"
        out+=("${v:-NA}")
    done
    echo "${out[*]}"
}
# med VALUE...: median of the numeric values (NA when none).
med() {
    local nums=()
    for v in "$@"; do [[ "$v" == NA ]] || nums+=("$v"); done
    ((${#nums[@]})) || { echo NA; return; }
    median "${nums[@]}"
}
# spread VALUE...: `min–max` of the numeric values.
spread() {
    printf '%s\n' "$@" | awk '$1 != "NA"' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%s–%s", lo, hi; else print "NA" }'
}
mib() { awk -v v="$1" 'BEGIN { if (v == "NA" || v == "") print "NA"; else printf "%.1f", v / 1024 }'; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "NA" || v == "") print "NA"; else printf f, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }

# Per row and round: CPU 0 µs/req (all busy time of CPU 0 / requests) and the proxy's own
# share of CPU 0, from the RESULT fields.
derived() {
    local sc="$1" proxy="$2" what="$3" r out=()
    for r in $(seq "$ROUNDS"); do
        local line="${RES["$proxy|$sc|$r"]:-}" rps cpu busy
        rps="$(field rps "$line")" cpu="$(field proxy_cpu_us "$line")" busy="$(field proxy_cpus_busy_pct "$line")"
        case "$what" in
        all) out+=("$(awk -v r="${rps:-NA}" -v b="${busy:-NA}" 'BEGIN { if (r == "NA" || b == "NA" || r + 0 == 0) print "NA"; else printf "%.1f", b * 10000 / r }')") ;;
        own) out+=("$(awk -v r="${rps:-NA}" -v c="${cpu:-NA}" 'BEGIN { if (r == "NA" || c == "NA") print "NA"; else printf "%.0f", r * c / 10000 }')") ;;
        esac
    done
    echo "${out[*]}"
}

BASE=""
for p in $PROXIES; do [[ -z "$BASE" && "${p%%@*}" == nginx ]] && BASE="$p"; done

echo
echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), $(((($(date +%s) - STARTED) + 30) / 60)) min"
echo "each proxy: 1 worker on CPU $PROXY_CPU; 2 mock executors (${MOCK_ENGINE:-fast}) + loadtest (1 thread) on CPU $CLIENT_CPU; closed loop, ${DURATION} s per row; $ROUNDS rounds, proxies in rotated order each round"
echo "CPU busy before the runs: $BUSY_BEFORE. Medians over the rounds; [brackets]: every round's value, or min–max. Proxy CPU µs/req: utime+stime of the proxy's processes; CPU $PROXY_CPU µs/req: all time CPU $PROXY_CPU was busy (kernel threads, other processes and hypervisor steal included). Last column: CPU $PROXY_CPU busy (the proxy's own share). Ratios: medians against ${BASE:-nginx}."
echo
echo "| scenario | conns | proxy | req/s [min–max] | p50 ms | p99 ms [min–max] | p99.9 ms | errors | proxy CPU µs/req [rounds] | CPU $PROXY_CPU µs/req | req/s vs nginx | CPU/req vs nginx | CPU $PROXY_CPU busy (proxy) |"
echo "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
declare -A MED_CPU MED_RPS MED_P99
for sc in $SCENARIOS; do
    scenario="${sc%%:*}" conns="${sc##*:}"
    for proxy in $PROXIES; do
        k="$proxy|$sc"
        rps_all="$(vals rps "$k" RES)" cpu_all="$(vals proxy_cpu_us "$k" RES)" p99_all="$(vals p99_ms "$k" RES)"
        # shellcheck disable=SC2086
        {
            MED_RPS[$k]="$(med $rps_all)" MED_CPU[$k]="$(med $cpu_all)" MED_P99[$k]="$(med $p99_all)"
            errs="$(printf '%s\n' $(vals errors "$k" RES) | awk '$1 != "NA" { s += $1; n++ } END { print n ? s : "NA" }')"
            printf '| %s | %s | %s | %s [%s] | %s | %s [%s] | %s | %s | %s [%s] | %s | %s | %s | %s %% (%s %%) |\n' \
                "$scenario" "$conns" "$(label "$proxy" "$sc")" \
                "$(fmt "${MED_RPS[$k]}" %.0f)" "$(spread $rps_all)" \
                "$(fmt "$(med $(vals p50_ms "$k" RES))" %.2f)" "$(fmt "${MED_P99[$k]}" %.2f)" "$(spread $p99_all)" \
                "$(fmt "$(med $(vals p999_ms "$k" RES))" %.2f)" "$errs" "$(fmt "${MED_CPU[$k]}" %.1f)" "$cpu_all" \
                "$(fmt "$(med $(derived "$sc" "$proxy" all))" %.1f)" \
                "$(ratio "${MED_RPS[$k]}" "${MED_RPS["$BASE|$sc"]:-NA}")" \
                "$(ratio "${MED_CPU[$k]}" "${MED_CPU["$BASE|$sc"]:-NA}")" \
                "$(fmt "$(med $(vals proxy_cpus_busy_pct "$k" RES))" %.0f)" \
                "$(fmt "$(med $(derived "$sc" "$proxy" own))" %.0f)"
        }
    done
done

if [[ "$LATENCY_DURATION" != 0 ]]; then
    echo
    echo "Light load: 1 connection, one small GET at a time, ${LATENCY_DURATION} s per path and round; *direct* is the same generator straight at mock executor 1 (no proxy). Medians over the rounds [p50 of every round]. Added = proxy p50 − direct p50."
    echo
    echo "| path | req/s | p50 µs [rounds] | p99 µs | added p50 µs | proxy CPU µs/req |"
    echo "|---|--:|--:|--:|--:|--:|"
    d50="$(med $(vals p50_us direct LAT))"
    for k in direct $PROXIES; do
        p50_all="$(vals p50_us "$k" LAT)"
        # shellcheck disable=SC2086
        p50="$(med $p50_all)"
        added="$(awk -v a="$p50" -v b="$d50" 'BEGIN { if (a == "NA" || b == "NA") print "NA"; else print a - b }')"
        # shellcheck disable=SC2086
        printf '| %s | %s | %s [%s] | %s | %s | %s |\n' "$([[ $k == direct ]] && echo direct || label "$k" ping:1)" \
            "$(fmt "$(med $(vals rps "$k" LAT))" %.0f)" "$(fmt "$p50" %.0f)" "$p50_all" "$(fmt "$(med $(vals p99_us "$k" LAT))" %.0f)" \
            "$([[ $k == direct ]] && echo – || fmt "$added" %.0f)" "$([[ $k == direct ]] && echo NA || fmt "$(med $(vals proxy_cpu_us "$k" LAT))" %.1f)"
    done
fi

if ((IDLE_CONNS > 0)); then
    echo
    echo "Idle connections: $IDLE_CONNS keep-alive connections opened one by one to each proxy, one small GET answered on each, then left idle; RSS of the proxy's processes (nginx: master + worker) before and with them open, ${IDLE_HOLD:-1} s after the last. Per connection = growth ÷ connections opened (medians [every round]). *New conn* = one more request on a fresh connection while they are open. Kernel socket memory is not in RSS."
    echo
    echo "| proxy | opened | RSS before MiB | RSS idle MiB | KiB per idle connection [rounds] | RSS after closing MiB | new conn ms |"
    echo "|---|--:|--:|--:|--:|--:|--:|"
    for proxy in $PROXIES; do
        per_all="$(vals kib_per_conn "$proxy" IDLE)"
        # shellcheck disable=SC2086
        printf '| %s | %s | %s | %s | %s [%s] | %s | %s |\n' "$(label "$proxy" "ping:$IDLE_CONNS")" \
            "$(med $(vals opened "$proxy" IDLE))" \
            "$(mib "$(med $(vals rss_before_kib "$proxy" IDLE))")" \
            "$(mib "$(med $(vals rss_idle_kib "$proxy" IDLE))")" \
            "$(fmt "$(med $per_all)" %.2f)" "$per_all" \
            "$(mib "$(med $(vals rss_closed_kib "$proxy" IDLE))")" \
            "$(fmt "$(med $(vals new_conn_ms "$proxy" IDLE))" %.2f)"
    done
fi

# Anchor tuning: per scenario, each anchor's candidates by median proxy CPU µs/request.
# Rule: within 5 % of a scenario's best counts as a tie. The general choice is the candidate
# tied for best in the most scenarios (then the lowest sum of ratios to the best, then the
# first listed); a scenario where the general choice is more than 5 % behind gets its best.
tuned=""
for anchor in nginx haproxy; do
    cands=()
    for p in $PROXIES; do [[ "$p" == "$anchor@"* ]] && cands+=("${p#*@}"); done
    ((${#cands[@]} >= 2)) || continue
    tuned+="$anchor "
    echo
    echo "$anchor candidates per scenario: median proxy CPU µs/req (ratio to the best; median req/s, p99 ms)"
    echo
    echo "| scenario | conns | best | candidates, best first |"
    echo "|---|--:|---|---|"
    table=""
    for sc in $SCENARIOS; do
        rows=""
        for v in "${cands[@]}"; do
            k="$anchor@$v|$sc"
            rows+="$v ${MED_CPU[$k]:-NA} ${MED_RPS[$k]:-NA} ${MED_P99[$k]:-NA}"$'\n'
        done
        ranked="$(printf '%s' "$rows" | grep -v ' NA ' | sort -g -k2,2 || true)"
        [[ -n "$ranked" ]] || continue
        best_cpu="$(awk 'NR == 1 { print $2 }' <<<"$ranked")"
        printf '| %s | %s | %s | %s |\n' "${sc%%:*}" "${sc##*:}" "$(awk 'NR == 1 { print $1 }' <<<"$ranked")" \
            "$(awk -v b="$best_cpu" '{ printf "%s%s %.1f (%.2f; %.0f, %.2f)", sep, $1, $2, $2 / b, $3, $4; sep = ", " }' <<<"$ranked")"
        table+="$(awk -v sc="$sc" -v b="$best_cpu" '{ print sc, $1, $2 / b }' <<<"$ranked")"$'\n'
    done
    # table: "scenario candidate ratio" lines; the general choice, then the exceptions.
    order_list="${cands[*]}"
    general="$(printf '%s' "$table" | awk -v order="$order_list" '
        BEGIN { n = split(order, o, " ") }
        { if ($3 <= 1.05) ties[$2]++; sum[$2] += $3 }
        END {
            best = ""
            for (i = 1; i <= n; i++) {
                c = o[i]
                if (!(c in sum)) continue
                if (best == "" || ties[c] + 0 > ties[best] + 0 || (ties[c] + 0 == ties[best] + 0 && sum[c] < sum[best])) best = c
            }
            print best
        }')"
    mapping="default=$general"
    while read -r sc cand r; do
        [[ -n "$sc" ]] || continue
        if [[ "$cand" == "$general" ]] && awk -v r="$r" 'BEGIN { exit !(r > 1.05) }'; then
            best_here="$(printf '%s' "$table" | awk -v sc="$sc" '$1 == sc && $3 == 1 { print $2; exit }')"
            mapping+=" $sc=$best_here"
        fi
    done <<<"$table"
    echo
    echo "rule's choice: ${anchor^^}_BEST=\"$mapping\" (current default: \"$([[ $anchor == nginx ]] && echo "$NGINX_BEST" || echo "$HAPROXY_BEST")\")"
done
[[ -z "$tuned" ]] || echo
