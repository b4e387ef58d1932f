# opr-proxy — the README's two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 9800
SECRET ?= proxy-secret-key

.PHONY: run test ci fmt clippy unit integration bench-build build clean

build:
	$(CARGO) build --release --bin opr-proxy -p opr-proxy
	$(CARGO) build --release -p opr-loadtest --bin mock-executor

## Two demo executors on 8081/8082 and the proxy on $(PORT), round-robin, dev mode.
run: build
	@set -euo pipefail; \
	./target/release/mock-executor --port 8081 --name executor-1 & m1=$$!; \
	./target/release/mock-executor --port 8082 --name executor-2 & m2=$$!; \
	trap 'kill $$m1 $$m2 2>/dev/null || true' EXIT; \
	echo; \
	echo "Try this (four requests on one keep-alive connection alternate between executor-1 and executor-2):"; \
	echo "  curl -s -w '\\n' -H 'Authorization: Bearer $(SECRET)' 'http://127.0.0.1:$(PORT)/v1/ping?n=[1-4]'"; \
	echo; \
	PORT=$(PORT) OPR_PROXY_HOST=127.0.0.1 \
	OPR_PROXY_EXECUTORS=127.0.0.1:8081,127.0.0.1:8082 \
	OPR_PROXY_SECRET=$(SECRET) OPR_PROXY_EXECUTOR_SECRET=executor-secret-key \
	OPR_PROXY_ALGORITHM=round-robin OPR_PROXY_ENV=development \
	OPR_PROXY_HEALTHCHECK_INTERVAL=5000 \
	./target/release/opr-proxy

## Everything CI runs.
test: ci

ci: fmt clippy unit integration bench-build

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

## The integration suite on both io drivers.
integration:
	OPR_TEST_IO_DRIVER=io_uring $(CARGO) test --workspace --tests -- --test-threads=4
	OPR_TEST_IO_DRIVER=epoll $(CARGO) test -p opr-proxy --tests -- --test-threads=4

bench-build:
	$(CARGO) bench --workspace --no-run

clean:
	$(CARGO) clean
