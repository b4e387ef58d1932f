#!/bin/sh
# PID 1 of the kernel-test initramfs (tests/kernels/run.sh): two mock executors and the
# proxy with 2 workers; requests through it; prints "SMOKE PASS" or "SMOKE FAIL: why",
# then powers the VM off. Everything goes to the serial console.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
echo "kernel $(uname -r)"

fail() {
    echo "SMOKE FAIL: $*"
    echo "--- proxy log"
    cat /tmp/proxy.log
    poweroff -f
}

# Wait until FILE holds TEXT: 60 s at most (TCG is slow, and the machine may be shared).
wait_for() {
    for _ in $(seq 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "no \"$2\" in $1"
}

mock-executor --port 8081 --name executor-1 >/tmp/m1.log 2>&1 &
mock-executor --port 8082 --name executor-2 >/tmp/m2.log 2>&1 &
wait_for /tmp/m1.log "listening on"
wait_for /tmp/m2.log "listening on"

key=kernel-test-key
PORT=9800 OPR_PROXY_HOST=127.0.0.1 OPR_PROXY_CORES=2 \
    OPR_PROXY_EXECUTORS=127.0.0.1:8081,127.0.0.1:8082 \
    OPR_PROXY_SECRET=$key OPR_PROXY_EXECUTOR_SECRET=executor-secret-key \
    OPR_PROXY_ALGORITHM=round-robin OPR_PROXY_ENV=development \
    opr-proxy >/tmp/proxy.log 2>&1 &
wait_for /tmp/proxy.log "listening on"
cat /tmp/proxy.log

# Four requests on one keep-alive connection (pipelined, so one worker serves them all):
# round-robin must alternate between the executors. busybox nc stops reading when its
# input ends, so the input stays open until the four answers are in (10 s at most).
req="GET /v1/ping HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer $key\r\n"
: >/tmp/pings
{
    printf "$req\r\n$req\r\n$req\r\n${req}Connection: close\r\n\r\n"
    for _ in $(seq 100); do
        [ "$(grep -c 'x-mock-name' /tmp/pings)" -ge 4 ] && break
        sleep 0.1
    done
} | nc 127.0.0.1 9800 >>/tmp/pings
order=$(grep -o 'x-mock-name: executor-[12]' /tmp/pings | grep -o '[12]$' | tr -d '\n')
echo "executors in order: $order"
[ "$order" = 1212 ] || [ "$order" = 2121 ] || fail "round-robin did not alternate: $order"

health=$(wget -q -O - http://127.0.0.1:9800/v1/proxy/health) || fail "health failed"
echo "health: $health"

wget -q -O /tmp/metrics --header "Authorization: Bearer $key" \
    http://127.0.0.1:9800/v1/proxy/metrics || fail "metrics failed"
grep '^opr_proxy_worker_info' /tmp/metrics
for w in 0 1; do
    grep -q "^opr_proxy_worker_info{worker=\"$w\",io_driver=\"io_uring" /tmp/metrics ||
        fail "worker $w is not on io_uring in the metrics"
done
grep -q 'io driver: io_uring (Linux' /tmp/proxy.log || fail "no probe decision line"

echo "SMOKE PASS"
poweroff -f
