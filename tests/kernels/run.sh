#!/usr/bin/env bash
# The proxy binary (make build's: release, or the dev build under CI) on other kernels:
# boots Debian's packaged kernels (6.1, Debian 12's stock kernel, and 6.12) under QEMU's
# TCG emulator with the proxy in an initramfs and runs tests/kernels/init.sh (the smoke test) on each; fails unless every kernel passes.
#
# Needs qemu-system-x86, busybox-static and cpio (.ci/run installs them); the kernel
# packages are fetched once with `apt-get download` into target/kernels/ (OPR_KERNEL_CACHE:
# .ci/run keeps them in ~/.cache so that a fresh clone does not fetch them again). Without
# the tools: skipped with a message, or a failure under CI. Knobs: KERNELS (default
# "6.1 6.12"), KERNEL_TIMEOUT (seconds per boot, default 120), OPR_KERNEL_BIN and
# OPR_KERNEL_MOCK (default target/release/{opr-proxy,mock-executor}).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
# Kernel packages (kept); the initramfs and console logs of this run go to $work.
work=$root/target/kernels
cache=${OPR_KERNEL_CACHE:-$work}
bin=${OPR_KERNEL_BIN:-$root/target/release/opr-proxy}
mock=${OPR_KERNEL_MOCK:-$root/target/release/mock-executor}
kernels=${KERNELS:-"6.1 6.12"}
limit=${KERNEL_TIMEOUT:-120}

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    if [ -n "${CI:-}" ]; then
        echo "kernel-test: missing ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "kernel-test: SKIP, missing ${missing[*]} (apt-get install ${missing[*]})"
    exit 0
fi
for f in "$bin" "$mock"; do
    [ -x "$f" ] || { echo "kernel-test: $f not built (make build)" >&2; exit 1; }
done

# The newest package of a kernel series in the apt lists: 6.1 -> linux-image-6.1.0-N-cloud-
# amd64-unsigned, 6.12 -> linux-image-6.12.N+deb12-cloud-amd64-unsigned.
package_of() {
    local pattern
    case $1 in
        6.1) pattern='^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' ;;
        *) pattern="^linux-image-${1//./\\.}\\.[0-9]+\\+deb[0-9]+-cloud-amd64-unsigned\$" ;;
    esac
    apt-cache search --names-only "$pattern" | awk '{print $1}' | sort -V | tail -1
}

# vmlinuz of a kernel series, downloaded and unpacked once into target/kernels/<series>/.
kernel_image() {
    local series=$1 dir=$cache/$1 name
    if ! compgen -G "$dir/boot/vmlinuz-*" >/dev/null; then
        name=$(package_of "$series")
        if [ -z "$name" ]; then
            local sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo apt-get update -qq >&2
            name=$(package_of "$series")
        fi
        [ -n "$name" ] || { echo "kernel-test: no Debian package for Linux $series" >&2; return 1; }
        mkdir -p "$cache/debs" "$dir"
        if ! compgen -G "$cache/debs/${name}_*.deb" >/dev/null; then
            (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$name" >&2)
        fi
        dpkg -x "$cache/debs/${name}"_*.deb "$dir"
    fi
    compgen -G "$dir/boot/vmlinuz-*" | head -1
}

# One initramfs for every kernel: busybox, the two binaries, their libraries, the smoke test.
mkdir -p "$work"
initrd=$work/initrd.gz
build_initrd() {
    local tree=$work/initramfs
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,proc,sys,dev,tmp}
    cp /bin/busybox "$tree/bin/busybox"
    for applet in sh mount ip wget nc grep cat sleep seq tr poweroff uname head wc; do
        ln -s busybox "$tree/bin/$applet"
    done
    cp "$bin" "$tree/bin/opr-proxy"
    cp "$mock" "$tree/bin/mock-executor"
    # The libraries ldd names (libc, libgcc_s, the loader), at the paths it gives.
    for lib in $( (ldd "$bin"; ldd "$mock") | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$tree$(dirname "$lib")"
        cp -L "$lib" "$tree$lib"
    done
    cp "$root/tests/kernels/init.sh" "$tree/init"
    chmod +x "$tree/init"
    (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd"
}
build_initrd

failed=()
for series in $kernels; do
    vmlinuz=$(kernel_image "$series") || { failed+=("$series"); continue; }
    log=$work/console-$series.log
    started=$(date +%s)
    # TCG: KVM is not usable inside these VMs. `poweroff -f` in init ends QEMU.
    timeout "$limit" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 512 \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet" \
        -nographic -no-reboot -monitor none -serial stdio </dev/null >"$log" 2>&1 || true
    took=$(($(date +%s) - started))
    # The markers init.sh prints, and the proxy's own lines (both workers on io_uring,
    # the probe's decision), read from the serial console.
    ok=1
    for marker in "SMOKE PASS" "io driver: io_uring (Linux $series:" \
        "worker 0 serving with io_uring" "worker 1 serving with io_uring"; do
        if ! grep -qF "$marker" "$log"; then
            echo "kernel-test: Linux $series: no \"$marker\" on the console" >&2
            ok=0
        fi
    done
    if [ $ok -eq 1 ]; then
        echo "kernel-test: Linux $series ($(basename "$vmlinuz")): smoke test passed in ${took} s"
    else
        echo "kernel-test: Linux $series failed after ${took} s; console ($log):" >&2
        tail -n 60 "$log" >&2
        failed+=("$series")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "kernel-test: FAILED on Linux ${failed[*]}" >&2
    exit 1
fi
echo "kernel-test: passed on Linux $kernels"
