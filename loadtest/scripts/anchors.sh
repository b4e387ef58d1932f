# The anchors of `make compare` (sourced by compare.sh): nginx and HAProxy configurations,
# the candidates tried for each (`ANCHOR_TUNING=1`), and which candidate each scenario runs
# with by default. Needs TMP, M1, M2, P, POOL, NOFILE, NGINX_CONNECTIONS and HAPROXY_MAXCONN
# set by the caller; LISTEN_H2=1 makes the listener HTTP/2 with prior knowledge (h2c rows).
#
# Candidates (loadtest/README.md has the measurements and the rule that picked the defaults):
#   nginx   stream       no buffering either way (proxy_buffering off,
#                        proxy_request_buffering off), 64 KiB buffers: streams like opr-proxy
#           stream-16k   the same with 16 KiB buffers
#           buffered     response buffering on, in memory (proxy_buffers 32 64k: a 1 MiB
#                        response fits; proxy_max_temp_file_size 0: never to disk)
#           buffered-req buffered, and the request body read whole into memory before it is
#                        forwarded (proxy_request_buffering on, client_body_buffer_size 1m)
#           sendfile     stream + `sendfile on; tcp_nopush on`. sendfile only serves file-backed
#                        buffers (static files, temp files of a buffered response), never
#                        these in-memory proxied bodies; kept as a candidate to show that.
#                        tcp_nodelay is on by default in every candidate (keep-alive).
#   haproxy buf64k       tune.bufsize 65536 (the default is 16384)
#           buf16k       the default 16 KiB buffers
#           splice-auto  buf64k + `option splice-auto` (the kernel moves body data socket to
#                        pipe to socket when HAProxy judges it useful)
#           splice       buf64k + `option splice-request` + `option splice-response` (always)
#           splice-16k   splice with the default 16 KiB buffers

NGINX_CANDIDATES="stream stream-16k buffered buffered-req sendfile"
HAPROXY_CANDIDATES="buf64k buf16k splice-auto splice splice-16k"

# Which candidate runs for a row unless PROXIES names one (`nginx@buffered`): a list of
# KEY=CANDIDATE, KEY a SCENARIOS entry (`download-1m:256`), a scenario name (`download-1m`),
# or `default`; the light-load and idle-connection tables send small GETs and use the
# `ping` choice. Provisional choice from two short runs (2 s rows, 2 and 3 rounds, a busy
# machine; see loadtest/README.md); re-measure with ANCHOR_TUNING=1, which prints the
# mapping its rule picks.
NGINX_BEST="${NGINX_BEST:-default=buffered-req download-1m=stream}"
HAPROXY_BEST="${HAPROXY_BEST:-default=splice-16k ping=splice}"

# anchor_candidates ANCHOR: the candidate names.
anchor_candidates() {
    case "$1" in
    nginx) echo "$NGINX_CANDIDATES" ;;
    haproxy) echo "$HAPROXY_CANDIDATES" ;;
    *) echo "" ;;
    esac
}

# anchor_variant ANCHOR KEY: the candidate for a SCENARIOS entry (or `default`).
anchor_variant() {
    local anchor="$1" key="$2" map pair v="" name="${2%%:*}"
    case "$anchor" in
    nginx) map="$NGINX_BEST" ;;
    haproxy) map="$HAPROXY_BEST" ;;
    *) return 0 ;;
    esac
    for pair in $map; do [[ "${pair%%=*}" == default ]] && v="${pair#*=}"; done
    for pair in $map; do [[ "${pair%%=*}" == "$name" ]] && v="${pair#*=}"; done
    for pair in $map; do [[ "${pair%%=*}" == "$key" ]] && v="${pair#*=}"; done
    echo "$v"
}

# valid_variant ANCHOR CANDIDATE: true when CANDIDATE is one of ANCHOR's.
valid_variant() {
    [[ " $(anchor_candidates "$1") " == *" $2 "* ]]
}

# write_nginx_conf CANDIDATE: $TMP/nginx/nginx.conf
write_nginx_conf() {
    local variant="$1" http_extra="" loc
    case "$variant" in
    stream | sendfile)
        loc="proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 64k;
            client_body_buffer_size 64k;"
        [[ "$variant" == sendfile ]] && http_extra="sendfile on;
    tcp_nopush on;"
        ;;
    stream-16k)
        loc="proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 16k;
            proxy_buffers 4 16k;
            proxy_busy_buffers_size 16k;
            client_body_buffer_size 16k;"
        ;;
    buffered | buffered-req)
        loc="proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 32 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;"
        if [[ "$variant" == buffered-req ]]; then
            loc+="
            proxy_request_buffering on;
            client_body_buffer_size 1m;"
        else
            loc+="
            proxy_request_buffering off;
            client_body_buffer_size 64k;"
        fi
        ;;
    *) die "unknown nginx candidate $variant ($NGINX_CANDIDATES)" ;;
    esac
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<EOF
# candidate: $variant. 1 worker, round-robin, HTTP/1.1 keep-alive to the executors.
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $NGINX_CONNECTIONS; }
http {
    access_log off;
    $http_extra
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
        listen 127.0.0.1:$P${LISTEN_H2:+ http2};
        location / {
            proxy_pass http://executors;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $loc
        }
    }
}
EOF
}

# write_haproxy_cfg CANDIDATE: $TMP/haproxy.cfg
write_haproxy_cfg() {
    local variant="$1" bufsize="tune.bufsize 65536" opts=""
    case "$variant" in
    buf64k) ;;
    buf16k) bufsize="" ;;
    splice-auto) opts="option splice-auto" ;;
    splice) opts="option splice-request
    option splice-response" ;;
    splice-16k)
        bufsize=""
        opts="option splice-request
    option splice-response"
        ;;
    *) die "unknown haproxy candidate $variant ($HAPROXY_CANDIDATES)" ;;
    esac
    cat >"$TMP/haproxy.cfg" <<EOF
# candidate: $variant
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    # HAProxy reserves two descriptors per connection; with idle clients it needs one.
    # Start (with a warning) when the hard limit is lower than what it would reserve.
    no strict-limits
    $bufsize
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    $opts
frontend clients
    bind 127.0.0.1:$P${LISTEN_H2:+ proto h2}
    default_backend executors
backend executors
    balance roundrobin
    http-reuse always
    server executor-1 127.0.0.1:$M1
    server executor-2 127.0.0.1:$M2
EOF
}
