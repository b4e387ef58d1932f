# opr-proxy — the README's two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 9800
SECRET ?= proxy-secret-key

.PHONY: run test ci fmt clippy lint-deploy unit integration container-test bench-build fuzz-replay build clean mutants

## One build of the proxy and the mock executor for `make run`, container-test and
## kernel-test: both binaries in one cargo invocation, so the dependencies are built once
## (with one feature set). BIN_PROFILE=release (the shipped profile, fat LTO) by default;
## CI passes BIN_PROFILE=dev to run those checks on the binaries the suite already built.
BIN_PROFILE ?= release
BIN_DIR := target/$(if $(filter dev,$(BIN_PROFILE)),debug,$(BIN_PROFILE))
build:
	$(CARGO) build --profile $(BIN_PROFILE) -p opr-proxy -p opr-loadtest --bin opr-proxy --bin mock-executor

## Two demo executors on 8081/8082 and the proxy on $(PORT), round-robin, dev mode.
run: build
	@set -euo pipefail; \
	./$(BIN_DIR)/mock-executor --port 8081 --name executor-1 & m1=$$!; \
	./$(BIN_DIR)/mock-executor --port 8082 --name executor-2 & m2=$$!; \
	trap 'kill $$m1 $$m2 2>/dev/null || true' EXIT; \
	for port in 8081 8082; do \
	  for i in $$(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null && break; sleep 0.05; done; \
	done; \
	echo; \
	echo "Try this (four requests on one keep-alive connection alternate between executor-1 and executor-2):"; \
	echo "  curl -s -w '\\n' -H 'Authorization: Bearer $(SECRET)' 'http://127.0.0.1:$(PORT)/v1/ping?n=[1-4]'"; \
	echo; \
	PORT=$(PORT) OPR_PROXY_HOST=127.0.0.1 \
	OPR_PROXY_EXECUTORS=127.0.0.1:8081,127.0.0.1:8082 \
	OPR_PROXY_SECRET=$(SECRET) OPR_PROXY_EXECUTOR_SECRET=executor-secret-key \
	OPR_PROXY_ALGORITHM=round-robin OPR_PROXY_ENV=development \
	OPR_PROXY_HEALTHCHECK_INTERVAL=5000 \
	./$(BIN_DIR)/opr-proxy

## Everything CI runs. What compiles runs first, one step after the other (each uses both
## cores); then the integration suite, which mostly waits (timeouts, health rounds), runs
## in the background while the checks that need a binary of their own use the cores.
## Its output is printed when both are done.
test: ci

ci: fmt clippy lint-deploy unit it-build
	@set -uo pipefail; \
	$(MAKE) --no-print-directory integration IT_BIN="$$(cat target/it-bin)" \
	  > target/ci-integration.log 2>&1 & it=$$!; \
	$(MAKE) --no-print-directory container-test bench-build fuzz-replay kernel-test; rest=$$?; \
	wait $$it; integration=$$?; \
	cat target/ci-integration.log; \
	[ $$integration -eq 0 ] || echo "ci: the integration suite failed"; \
	[ $$rest -eq 0 ] || echo "ci: a check after the integration build failed"; \
	[ $$integration -eq 0 ] && [ $$rest -eq 0 ]

fmt:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all -- --check

## --all-features: the soak test (behind the `soak` feature) is linted, never built by `make test`.
clippy:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

## Unit tests of both crates, and loadtest's own end-to-end tests (mocks, generator); none
## of them runs the proxy, so the io driver does not matter to them. Every test binary
## (the integration suite's too) is built by one cargo call, so both cores stay busy.
unit:
	$(CARGO) test --workspace --tests --no-run
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p opr-loadtest --test '*'

## The integration suite (tests/it/, one binary) on both io drivers, the two passes at once:
## most of a pass is waiting (timeouts, health rounds), so they share the cores well. Each
## pass's output goes to target/it-<driver>.log and is printed when both are done.
## TEST_THREADS per pass. The open-file limit is raised for tests/it/memory.rs.
TEST_THREADS ?= 4
IT_DRIVERS ?= io_uring epoll
IT_BIN ?=
integration:
	@set -uo pipefail; \
	bin="$(IT_BIN)"; \
	if [ -z "$$bin" ]; then $(MAKE) --no-print-directory it-build && bin=$$(cat target/it-bin) || exit 1; fi; \
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; \
	pids=(); \
	for d in $(IT_DRIVERS); do \
	  OPR_TEST_IO_DRIVER=$$d "$$bin" --test-threads=$(TEST_THREADS) > target/it-$$d.log 2>&1 & pids+=($$!); \
	done; \
	failed=""; i=0; \
	for d in $(IT_DRIVERS); do \
	  if wait $${pids[$$i]}; then r=passed; else r=FAILED; failed="$$failed $$d"; fi; i=$$((i+1)); \
	  echo "== integration on $$d: $$r ($$(grep -h '^test result' target/it-$$d.log | tail -n 1))"; \
	done; \
	for d in $$failed; do echo "== target/it-$$d.log"; cat target/it-$$d.log; done; \
	[ -z "$$failed" ] || { echo "integration failed on:$$failed"; exit 1; }

## The suite's binary (and the proxy binary it starts), its path in target/it-bin.
.PHONY: it-build
it-build:
	@set -uo pipefail; \
	json=$$($(CARGO) test -p opr-proxy --test it --no-run --message-format=json-render-diagnostics) || exit 1; \
	bin=$$(printf '%s\n' "$$json" | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep '/it-'); \
	[ -x "$$bin" ] || { echo "it-build: no test binary found"; exit 1; }; \
	echo "$$bin" > target/it-bin

## Dockerfile (hadolint), deploy/ YAML (yamllint), Kubernetes manifests
## (kubernetes-validate --strict), seccomp profiles, systemd unit (systemd-analyze verify),
## Prometheus alert rules (promtool check rules, promtool test rules), Grafana JSON.
## Offline; .ci/run installs the tools (deploy/lint.sh).
lint-deploy:
	bash deploy/lint.sh

## The proxy binary (make build's) as a container entrypoint under podman + runc (tests/it/container.rs):
## an image FROM scratch with the binary and its libraries, run with the original README's
## .env; health, forwarding, HEALTHCHECK, io driver per seccomp profile, SIGTERM drain.
## Skipped with a message where podman cannot run containers. About 30 s once built.
## The suite's binary runs it (ignored by a plain run).
container-test: build
	OPR_CONTAINER_BIN=$(CURDIR)/$(BIN_DIR)/opr-proxy \
	  $(CARGO) test -p opr-proxy --test it container -- --ignored --nocapture

## The proxy binary (make build's) on other kernels (tests/kernels/run.sh): Debian's packaged 6.1
## (Debian 12's stock kernel) and 6.12 booted under QEMU TCG with the proxy, two mock
## executors and a busybox smoke test in an initramfs: round-robin through the proxy,
## health, metrics, both workers on io_uring, the io driver probe's line. The kernel
## packages are fetched once (apt-get download) into target/kernels/. 5-18 s per kernel
## once built; skipped with a message without qemu-system-x86, busybox-static, cpio.
.PHONY: kernel-test
kernel-test: build
	OPR_KERNEL_BIN=$(CURDIR)/$(BIN_DIR)/opr-proxy OPR_KERNEL_MOCK=$(CURDIR)/$(BIN_DIR)/mock-executor \
	  bash tests/kernels/run.sh

## The benches run once each in test mode (dev profile, no second fat-LTO build): they
## build and work; `cargo bench` measures.
bench-build:
	$(CARGO) test --workspace --benches

## The fuzz crate (its own workspace, fuzz/README.md) on stable, without libFuzzer running:
## its checks replay fuzz/corpus/ and fuzz/regressions/ as unit tests, and the four targets
## still build, so neither rots between fuzzing runs. It shares target/ with the workspace,
## so the proxy and its dependencies are not built a second time.
fuzz-replay:
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) test --manifest-path fuzz/Cargo.toml --lib
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) build --manifest-path fuzz/Cargo.toml --bins

## Mutation testing of executor selection (cargo-mutants: `cargo install cargo-mutants`):
## every viable mutant of the selection code must make a library unit test fail. Only the
## library's test binary is built per mutant (the build is the cost). It copies the tree
## to a scratch directory and builds it there (one job); MUTANTS_FLAGS="--in-place"
## reuses target/ instead (the tree is restored after each mutant). Report in mutants.out/.
## Those three files whole, and of src/config.rs the affinity load factor's parser.
MUTANTS_FILES := src/balance.rs src/forward/reuse.rs src/outlier.rs src/config.rs
MUTANTS_ONLY := ^src/(balance|forward/reuse|outlier)\.rs|load_factor
MUTANTS_FLAGS ?= --jobs 1
mutants:
	$(CARGO) mutants --timeout 120 $(MUTANTS_FLAGS) --cargo-arg=--lib \
	  $(addprefix --file ,$(MUTANTS_FILES)) -F '$(MUTANTS_ONLY)'

clean:
	$(CARGO) clean

## Coverage-guided fuzzing on stable Rust (fuzz/README.md): each target for FUZZ_SECONDS
## seconds (default 60), seeded from fuzz/corpus/<target>/ plus fuzz/regressions/<target>/;
## new inputs go to the git-ignored fuzz/target/fuzz-corpus/<target>/. Fails on a crash
## (the input is left in fuzz/artifacts/<target>/). Installs cargo-fuzz when missing.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= request_head response_head chunked_decoder health_body
FUZZ_FLAGS ?= -max_len=16384 -timeout=10

.PHONY: fuzz
fuzz:
	@set -euo pipefail; \
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz; \
	$(CARGO) fuzz build --sanitizer none; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/fuzz-corpus/$$t; \
	  dirs="fuzz/target/fuzz-corpus/$$t fuzz/corpus/$$t"; \
	  if [ -d fuzz/regressions/$$t ]; then dirs="$$dirs fuzz/regressions/$$t"; fi; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  $(CARGO) fuzz run --sanitizer none $$t $$dirs -- \
	    -max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS) \
	    || { echo "fuzz: $$t failed; the input is in fuzz/artifacts/$$t/ (fuzz/README.md)"; exit 1; }; \
	done; \
	echo "fuzz: $(FUZZ_TARGETS): no crash in $(FUZZ_SECONDS) s each"

## Capacity report (loadtest/README.md): builds the release binaries, runs the default plan
## (three searches per scenario, the median and range reported: about 10-15 minutes on 2 cores
## with 4 s steps; a failing rate is tried again, then bisected; --repeat 1: about 4 minutes)
## and writes $(LOADTEST_OUT)/loadtest-report.{md,svg}.
## LOADTEST_ARGS adds options, e.g. LOADTEST_ARGS="--cores 2 --slo-p99 5" (loadtest --help).
LOADTEST_OUT ?= target/loadtest
LOADTEST_ARGS ?=

.PHONY: loadtest compare
loadtest:
	$(CARGO) build --release -p opr-proxy -p opr-loadtest --bin opr-proxy --bin loadtest --bin mock-executor
	./target/release/loadtest --proxy-bin ./target/release/opr-proxy --out $(LOADTEST_OUT) $(LOADTEST_ARGS)

## nginx, HAProxy and opr-proxy, 1 worker each on CPU 0, same scenarios, 3 interleaved rounds,
## medians, plus RSS per idle connection (about 12 minutes); installs nginx and haproxy with
## apt-get when missing. Env knobs: loadtest/scripts/compare.sh (ANCHOR_TUNING=1 tries every
## anchor configuration).
compare:
	bash loadtest/scripts/compare.sh

## Cold starts and overload (loadtest/README.md, "Cold starts"): random, round-robin,
## least-request, p2c and affinity over 4 mock executors with a warm-runtime model (cold-start
## rate, p50/p99/p99.9, executor shares, runtimes moved when one stops), then the per-executor
## cap + queue under 2x overload; 3 interleaved rounds, medians (about 4 minutes on 2 cores).
## Env knobs: loadtest/scripts/coldstart.sh (ALGORITHMS, ROUNDS, DURATION, TABLES, ...).
.PHONY: coldstart
coldstart:
	bash loadtest/scripts/coldstart.sh

## Soak (tests/soak.rs, behind the `soak` feature): SOAK_SECONDS (default 180) of mixed traffic through the release
## binary from 8 client threads while a chaos thread stops and restarts the 3 mock executors
## on their ports. Fails on any outcome docs/behaviour.md does not allow, a hang, the proxy dying, RSS
## growth over 16 MiB or fd growth past the pool. Prints a summary. Knobs in tests/soak.rs
## (SOAK_SEED, SOAK_ONLY, SOAK_CHAOS); OPR_TEST_IO_DRIVER=epoll runs it on epoll, SOAK_SPLICE=off
## without splice.
SOAK_SECONDS ?= 180

.PHONY: soak
soak:
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --release -p opr-proxy --features soak --test soak -- --ignored --nocapture
