#!/usr/bin/env bash
# `make compare`: the load scenarios against nginx, HAProxy and opr-proxy, each a 1-worker
# round-robin HTTP/1.1 proxy with executor keep-alive, pinned alone to CPU 0; the two mock
# executors and the load generator on CPU 1. Prints req/s, p50/p99/p99.9, proxy CPU µs per
# request (utime+stime of the proxy's processes) and ratios to nginx.
#
# Env: DURATION=10 (s per scenario per proxy) WARMUP=1 PROXIES="nginx haproxy opr-proxy"
#      SCENARIOS="ping:64 ping:256 ping:1024 download-64k:256 download-1m:256 upload-1m:256"
#      BASE_PORT=19280 NO_BUILD=1 MOCK_ENGINE=fast|std KEEP_TMP=1 (keep configs and logs)
#      LATENCY_DURATION=5 (s per proxy for the light-load latency table; 0 skips it)
#      POOL=1024 idle executor connections each proxy may keep (nginx `keepalive`,
#      OPR_PROXY_POOL_SIZE; HAProxy keeps idle server connections without a limit). Below the
#      connection count, nginx and opr-proxy close and reopen executor connections all the time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10}"
PROXIES="${PROXIES:-nginx haproxy opr-proxy}"
SCENARIOS="${SCENARIOS:-ping:64 ping:256 ping:1024 download-64k:256 download-1m:256 upload-1m:256}"
BASE_PORT="${BASE_PORT:-19280}"
SECRET="compare-$$"
POOL="${POOL:-1024}"

setup
build
cpu_layout
for p in $PROXIES; do
    case "$p" in
    nginx) ensure_cmd nginx nginx ;;
    haproxy) ensure_cmd haproxy haproxy ;;
    opr-proxy) ;;
    *) die "unknown proxy $p (nginx, haproxy, opr-proxy)" ;;
    esac
done

M1=$((BASE_PORT + 1)) M2=$((BASE_PORT + 2)) P=$((BASE_PORT + 10))
require_free "$M1" "$M2" "$P"
start_mocks "$M1" "$M2"

write_nginx_conf() {
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<EOF
# 1 worker, round-robin, HTTP/1.1 keep-alive to the executors; streaming both ways like
# opr-proxy (no request or response buffering to disk), with 64 KiB buffers like it.
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    client_max_body_size 0;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream executors {
        server 127.0.0.1:$M1;
        server 127.0.0.1:$M2;
        keepalive $POOL;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$P;
        location / {
            proxy_pass http://executors;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 64k;
            client_body_buffer_size 64k;
        }
    }
}
EOF
}

write_haproxy_cfg() {
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    # 64 KiB buffers, as nginx and opr-proxy get here (the default is 16 KiB).
    tune.bufsize 65536
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend clients
    bind 127.0.0.1:$P
    default_backend executors
backend executors
    balance roundrobin
    http-reuse always
    server executor-1 127.0.0.1:$M1
    server executor-2 127.0.0.1:$M2
EOF
}

# start_proxy NAME: sets PROXY_PIDS (what is killed) and CPU_PIDS (whose CPU time counts).
start_proxy() {
    case "$1" in
    nginx)
        write_nginx_conf
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
        write_haproxy_cfg
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

LATENCY_DURATION="${LATENCY_DURATION:-5}"
# Added latency under light load: one connection, one request at a time (no queueing),
# small GETs; the same run straight at a mock executor is the baseline.
latency_run() {
    loadtest_closed "$1" ping 1 "$LATENCY_DURATION" "${@:2}" || true
}

declare -A RES LAT
BUSY_BEFORE="$(cpu_busy)"
echo "compare: closed loop, ${DURATION} s per scenario per proxy (after ${WARMUP:-1} s warm-up)" >&2
if [[ "$LATENCY_DURATION" != 0 ]]; then
    LAT[direct]="$(latency_run "http://127.0.0.1:$M1")"
    log "  direct ping × 1: p50=$(field p50_us "${LAT[direct]}") µs p99=$(field p99_us "${LAT[direct]}") µs"
fi
# Scenario-major order: every scenario runs each proxy back to back (a fresh process for
# each row), so a noisy minute on this shared machine hits one scenario's rows alike
# instead of one proxy's whole column.
if [[ "$LATENCY_DURATION" != 0 ]]; then
    for proxy in $PROXIES; do
        start_proxy "$proxy"
        LAT[$proxy]="$(latency_run "http://127.0.0.1:$P" --proxy-pid "$CPU_PIDS")"
        log "  $proxy ping × 1: p50=$(field p50_us "${LAT[$proxy]}") µs p99=$(field p99_us "${LAT[$proxy]}") µs"
        stop_pids "${PROXY_PIDS[@]}"
        sleep 1 # let sockets of the stopped proxy drain before the next one binds the port
    done
fi
for sc in $SCENARIOS; do
    scenario="${sc%%:*}" conns="${sc##*:}"
    for proxy in $PROXIES; do
        start_proxy "$proxy"
        line="$(loadtest_closed "http://127.0.0.1:$P" "$scenario" "$conns" "$DURATION" --proxy-pid "$CPU_PIDS" || true)"
        if [[ -z "$line" ]]; then
            log "  $proxy $scenario × $conns: no result (see loadtest.log; KEEP_TMP=1 keeps $TMP)"
            line="RESULT rps=NA p50_ms=NA p99_ms=NA p999_ms=NA errors=NA proxy_cpu_us=NA proxy_cpus_busy_pct=NA"
        fi
        RES["$proxy|$sc"]="$line"
        log "  $proxy $scenario × $conns: rps=$(field rps "$line") p99=$(field p99_ms "$line") ms cpu=$(field proxy_cpu_us "$line") µs/req errors=$(field errors "$line")"
        stop_pids "${PROXY_PIDS[@]}"
        sleep 1
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }

echo
echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "each proxy: 1 worker on CPU $PROXY_CPU; 2 mock executors (${MOCK_ENGINE:-fast}) + loadtest (1 thread) on CPU $CLIENT_CPU; closed loop, ${DURATION} s"
echo "CPU busy before the runs: $BUSY_BEFORE. Proxy CPU µs/req: utime+stime of the proxy's processes; CPU $PROXY_CPU µs/req: all time CPU $PROXY_CPU was busy (kernel threads, other processes and hypervisor steal included). Last column: CPU $PROXY_CPU busy (the proxy's own share)."
echo
echo "| scenario | conns | proxy | req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/req | CPU $PROXY_CPU µs/req | req/s vs nginx | CPU/req vs nginx | CPU $PROXY_CPU busy (proxy) |"
echo "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
for sc in $SCENARIOS; do
    scenario="${sc%%:*}" conns="${sc##*:}"
    base="${RES["nginx|$sc"]:-}"
    for proxy in $PROXIES; do
        line="${RES["$proxy|$sc"]}"
        rps="$(field rps "$line")" cpu="$(field proxy_cpu_us "$line")"
        busy="$(field proxy_cpus_busy_pct "$line")"
        own="$(awk -v r="$rps" -v c="$cpu" 'BEGIN { if (r == "NA" || c == "NA") print "NA"; else printf "%.0f", r * c / 10000 }')"
        all="$(awk -v r="$rps" -v b="$busy" 'BEGIN { if (r == "NA" || b == "NA" || r + 0 == 0) print "NA"; else printf "%.1f", b * 10000 / r }')"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s %% (%s %%) |\n' \
            "$scenario" "$conns" "$proxy" "$rps" "$(field p50_ms "$line")" "$(field p99_ms "$line")" \
            "$(field p999_ms "$line")" "$(field errors "$line")" "$cpu" "$all" \
            "$(ratio "$rps" "$(field rps "$base")")" "$(ratio "$cpu" "$(field proxy_cpu_us "$base")")" \
            "$busy" "$own"
    done
done

if [[ "$LATENCY_DURATION" != 0 ]]; then
    echo
    echo "Light load: 1 connection, one small GET at a time, ${LATENCY_DURATION} s each; *direct* is the same generator straight at mock executor 1 (no proxy). Added = proxy p50 − direct p50."
    echo
    echo "| path | req/s | p50 µs | p99 µs | added p50 µs | proxy CPU µs/req |"
    echo "|---|--:|--:|--:|--:|--:|"
    d50="$(field p50_us "${LAT[direct]}")"
    for k in direct $PROXIES; do
        line="${LAT[$k]:-}"
        p50="$(field p50_us "$line")"
        added="$(awk -v a="$p50" -v b="$d50" 'BEGIN { if (a == "" || b == "") print "NA"; else print a - b }')"
        cpu="$(field proxy_cpu_us "$line")"
        printf '| %s | %s | %s | %s | %s | %s |\n' "$k" "$(field rps "$line")" "${p50:-NA}" \
            "$(field p99_us "$line")" "$([[ $k == direct ]] && echo – || echo "$added")" "${cpu:-NA}"
    done
fi
