# Shared helpers for validate.sh and compare.sh (sourced, not run): build, install
# packages, CPU layout, start processes we track by PID, readiness, cleanup on exit.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/target/release"
CARGO="${CARGO:-cargo}"
# Every process this script starts, so cleanup stops exactly these (never by name).
PIDS=()
TMP=""

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    stop_pids "${PIDS[@]}"
    if [[ -n "$TMP" && -d "$TMP" && -z "${KEEP_TMP:-}" ]]; then
        rm -rf "$TMP"
    fi
}

# Call once at the top of a script.
setup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/opr-loadtest.XXXXXX")"
}

# Stops the given PIDs now (and forgets them): TERM, a bounded wait, then KILL.
stop_pids() {
    local pid keep=()
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        [[ " $* " == *" $pid "* ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

build() {
    if [[ -n "${NO_BUILD:-}" ]]; then return; fi
    log "building release binaries (NO_BUILD=1 skips)..."
    (cd "$ROOT" &&
        "$CARGO" build --release -p opr-proxy --bin opr-proxy &&
        "$CARGO" build --release -p opr-loadtest --bin loadtest --bin mock-executor) >&2 ||
        die "cargo build failed"
}

# ensure_cmd COMMAND DEBIAN_PACKAGE: installs the package with apt-get when missing.
ensure_cmd() {
    local cmd="$1" pkg="$2" sudo=""
    command -v "$cmd" >/dev/null 2>&1 && return
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    command -v apt-get >/dev/null 2>&1 || die "$cmd is missing and apt-get is not available; install $pkg"
    log "installing $pkg (apt-get)..."
    $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >&2 ||
        die "could not install $pkg"
    command -v "$cmd" >/dev/null 2>&1 || die "$pkg installed but $cmd not on PATH"
}

# PROXY_CPU / CLIENT_CPU: the proxy alone on one CPU, everything else on another.
cpu_layout() {
    local n
    n="$(nproc)"
    if [[ -n "${PROXY_CPU:-}" && -n "${CLIENT_CPU:-}" ]]; then
        :
    elif ((n >= 2)); then
        PROXY_CPU=0
        CLIENT_CPU=1
    else
        log "warning: only $n CPU: nothing can be pinned apart; numbers include contention"
        PROXY_CPU=0
        CLIENT_CPU=0
    fi
    command -v taskset >/dev/null 2>&1 || ensure_cmd taskset util-linux
}

# Busy % of every CPU over one second, all processes (from /proc/stat): a shared machine
# shows here before it shows in the results.
cpu_busy() {
    local a b
    a="$(grep -E '^cpu[0-9]' /proc/stat)"
    sleep 1
    b="$(grep -E '^cpu[0-9]' /proc/stat)"
    paste <(echo "$a") <(echo "$b") | awk '{
        busy1 = $2 + $3 + $4 + $7 + $8 + $9; tot1 = busy1 + $5 + $6
        busy2 = $13 + $14 + $15 + $18 + $19 + $20; tot2 = busy2 + $16 + $17
        d = tot2 - tot1; if (d <= 0) d = 1
        printf "%s%s %.0f %%", sep, $1, 100 * (busy2 - busy1) / d; sep = ", "
    } END { print "" }'
}

# True when something accepts connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID WHAT: until PORT accepts, PID dies (error) or 20 s pass (error).
wait_port() {
    local port="$1" pid="$2" what="$3"
    for _ in $(seq 200); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "$what exited before listening on $port"
        sleep 0.1
    done
    die "$what did not listen on $port within 20 s"
}

require_free() {
    local port
    for port in "$@"; do
        port_open "$port" && die "port $port is busy (set BASE_PORT to another range)"
    done
    return 0
}

# start_mocks PORT...: fast mock executors on MOCK_CPU (default CLIENT_CPU);
# MOCK_ENGINE=std for the std-threads mock.
start_mocks() {
    local port i=0
    for port in "$@"; do
        i=$((i + 1))
        taskset -c "${MOCK_CPU:-$CLIENT_CPU}" "$BIN/mock-executor" --port "$port" --name "executor-$i" \
            --engine "${MOCK_ENGINE:-fast}" >"$TMP/mock-$i.log" 2>&1 &
        PIDS+=($!)
        wait_port "$port" "$!" "mock executor $i"
    done
}

# start_opr_proxy PORT SECRET EXECUTORS(comma list): one worker pinned to PROXY_CPU
# (OPR_BIN: another opr-proxy binary than target/release/opr-proxy).
# Sets OPR_PID.
start_opr_proxy() {
    local port="$1" secret="$2" executors="$3"
    PORT="$port" OPR_PROXY_HOST=127.0.0.1 OPR_PROXY_EXECUTORS="$executors" \
        OPR_PROXY_SECRET="$secret" OPR_PROXY_ALGORITHM=round-robin OPR_PROXY_CORES=1 \
        OPR_PROXY_MAX_BODY_SIZE=0 OPR_PROXY_HEALTHCHECK_INTERVAL=5000 \
        taskset -c "$PROXY_CPU" "${OPR_BIN:-$BIN/opr-proxy}" >"$TMP/opr-proxy.log" 2>&1 &
    OPR_PID=$!
    PIDS+=("$OPR_PID")
    wait_port "$port" "$OPR_PID" "opr-proxy"
}

# loadtest_closed URL SCENARIO CONNECTIONS DURATION [--proxy-pid LIST] : prints the RESULT line.
loadtest_closed() {
    local url="$1" scenario="$2" conns="$3" duration="$4"
    shift 4
    taskset -c "$CLIENT_CPU" "$BIN/loadtest" --mode closed --url "$url" --secret "${SECRET:-x}" \
        --proxy-cpus "$PROXY_CPU" \
        --scenario "$scenario" --connections "$conns" --duration "$duration" \
        --warmup "${WARMUP:-1}" --timeout "${TIMEOUT:-10}" "$@" 2>>"$TMP/loadtest.log" |
        grep '^RESULT' | tail -n 1
}

# proc_ticks PID_LIST(comma): utime+stime clock ticks of these processes, summed.
proc_ticks() {
    local pid sum=0 t
    for pid in ${1//,/ }; do
        # Fields 14 and 15 of /proc/PID/stat; the command name (field 2) may hold spaces.
        t="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }')"
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# cpu_line CPU: that CPU's /proc/stat line.
cpu_line() { grep "^cpu$1 " /proc/stat; }

# h2load_closed URL CONNECTIONS STREAMS DURATION CPU_PIDS: small GETs (/v1/ping) over HTTP/2
# with prior knowledge (h2c), STREAMS concurrent streams on each of CONNECTIONS
# connections, with h2load (nghttp2-client) on CLIENT_CPU. Prints a RESULT line with the
# fields of loadtest's: req/s and errors (failed, errored, timed out, 4xx, 5xx) from h2load;
# p50/p99/p99.9 from its per-request log; proxy CPU µs/request and CPU busy % of PROXY_CPU
# from /proc over the measured window (after the warm-up).
h2load_closed() {
    local url="$1" conns="$2" streams="$3" duration="$4" pids="$5"
    local warm="${WARMUP:-1}" lat="$TMP/h2load-requests.log" out h2pid t0 c0 t1 c1
    rm -f "$lat" "$TMP/h2load-start"
    taskset -c "$CLIENT_CPU" h2load -c "$conns" -m "$streams" -D "$duration" --warm-up-time "$warm"         -H "Authorization: Bearer ${SECRET:-x}" --log-file "$lat" "$url/v1/ping"         >"$TMP/h2load.out" 2>>"$TMP/loadtest.log" &
    h2pid=$!
    sleep "$warm"
    t0="$(proc_ticks "$pids")" c0="$(cpu_line "$PROXY_CPU")"
    wait "$h2pid" || true
    t1="$(proc_ticks "$pids")" c1="$(cpu_line "$PROXY_CPU")"
    out="$(cat "$TMP/h2load.out")"
    cat "$TMP/h2load.out" >>"$TMP/loadtest.log"
    local rps done errs pcts cpu busy
    rps="$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")"
    done="$(sed -n 's/^requests: .* \([0-9]*\) done.*/\1/p' <<<"$out")"
    errs="$(awk '/^requests:/ { e += $10 + $12 + $14 } /^status codes:/ { e += $7 + $9 } END { print e + 0 }' <<<"$out")"
    [[ -n "$rps" && -n "$done" && "$done" != 0 ]] || return 0
    pcts="$(awk -F'\t' '{ print $3 }' "$lat" 2>/dev/null | sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "NA NA NA"; exit }
        printf "%.3f %.3f %.3f", a[int(NR * 0.5) + (NR * 0.5 > int(NR * 0.5))] / 1000,
            a[int(NR * 0.99) + (NR * 0.99 > int(NR * 0.99))] / 1000, a[int(NR * 0.999) + (NR * 0.999 > int(NR * 0.999))] / 1000 }')"
    cpu="$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$(awk -v r="$rps" -v d="$duration" 'BEGIN { print r * d }')" \
        'BEGIN { if (n <= 0) print "NA"; else printf "%.1f", t * 1000000 / hz / n }')"
    busy="$(paste <(echo "$c0") <(echo "$c1") | awk '{
        b1 = $2 + $3 + $4 + $7 + $8 + $9; t1 = b1 + $5 + $6
        b2 = $13 + $14 + $15 + $18 + $19 + $20; t2 = b2 + $16 + $17
        d = t2 - t1; if (d <= 0) d = 1; printf "%.0f", 100 * (b2 - b1) / d }')"
    read -r p50 p99 p999 <<<"$pcts"
    echo "RESULT rps=$rps p50_ms=$p50 p99_ms=$p99 p999_ms=$p999 errors=$errs proxy_cpu_us=$cpu proxy_cpus_busy_pct=$busy"
}

# field NAME "RESULT ... NAME=value ...": the value.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -n 1; }

# Median of numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "NA"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
