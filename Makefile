# opr-proxy — the README's two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 9800
SECRET ?= proxy-secret-key

.PHONY: run test ci fmt clippy lint-deploy unit integration container-test bench-build fuzz-replay build clean mutants

build:
	$(CARGO) build --release --bin opr-proxy -p opr-proxy
	$(CARGO) build --release -p opr-loadtest --bin mock-executor

## Two demo executors on 8081/8082 and the proxy on $(PORT), round-robin, dev mode.
run: build
	@set -euo pipefail; \
	./target/release/mock-executor --port 8081 --name executor-1 & m1=$$!; \
	./target/release/mock-executor --port 8082 --name executor-2 & m2=$$!; \
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
	./target/release/opr-proxy

## Everything CI runs.
test: ci

ci: fmt clippy lint-deploy unit integration container-test bench-build fuzz-replay kernel-test

fmt:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

## The integration suite on both io drivers.
integration:
	OPR_TEST_IO_DRIVER=io_uring $(CARGO) test --workspace --tests -- --test-threads=4
	OPR_TEST_IO_DRIVER=epoll $(CARGO) test -p opr-proxy --tests -- --test-threads=4

## Dockerfile (hadolint), deploy/ YAML (yamllint), Kubernetes manifests
## (kubernetes-validate --strict), seccomp profiles, systemd unit (systemd-analyze verify),
## Prometheus alert rules (promtool check rules, promtool test rules), Grafana JSON.
## Offline; .ci/run installs the tools (deploy/lint.sh).
lint-deploy:
	bash deploy/lint.sh

## The release binary as a container entrypoint under podman + runc (tests/container.rs):
## an image FROM scratch with the binary and its libraries, run with the original README's
## .env; health, forwarding, HEALTHCHECK, io driver per seccomp profile, SIGTERM drain.
## Skipped with a message where podman cannot run containers. About 30 s once built.
container-test:
	$(CARGO) build --release --bin opr-proxy -p opr-proxy
	OPR_CONTAINER_BIN=$(CURDIR)/target/release/opr-proxy \
	  $(CARGO) test -p opr-proxy --test container -- --ignored --nocapture

## The release binary on other kernels (tests/kernels/run.sh): Debian's packaged 6.1
## (Debian 12's stock kernel) and 6.12 booted under QEMU TCG with the proxy, two mock
## executors and a busybox smoke test in an initramfs: round-robin through the proxy,
## health, metrics, both workers on io_uring, the io driver probe's line. The kernel
## packages are fetched once (apt-get download) into target/kernels/. 5-18 s per kernel
## once built; skipped with a message without qemu-system-x86, busybox-static, cpio.
.PHONY: kernel-test
kernel-test: build
	bash tests/kernels/run.sh

bench-build:
	$(CARGO) bench --workspace --no-run

## The fuzz crate (its own workspace, fuzz/README.md) on stable, without libFuzzer running:
## its checks replay fuzz/corpus/ and fuzz/regressions/ as unit tests, and the four targets
## still build, so neither rots between fuzzing runs. About 45 s from a clean fuzz/target
## on 2 cores, under a second once built.
fuzz-replay:
	$(CARGO) test --manifest-path fuzz/Cargo.toml --lib
	$(CARGO) build --manifest-path fuzz/Cargo.toml --bins

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
	$(CARGO) build --release -p opr-proxy --bin opr-proxy
	$(CARGO) build --release -p opr-loadtest --bin loadtest --bin mock-executor
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

## Soak (tests/soak.rs): SOAK_SECONDS (default 180) of mixed traffic through the release
## binary from 8 client threads while a chaos thread stops and restarts the 3 mock executors
## on their ports. Fails on any outcome SPEC does not allow, a hang, the proxy dying, RSS
## growth over 16 MiB or fd growth past the pool. Prints a summary. Knobs in tests/soak.rs
## (SOAK_SEED, SOAK_ONLY, SOAK_CHAOS); OPR_TEST_IO_DRIVER=epoll runs it on epoll, SOAK_SPLICE=off
## without splice.
SOAK_SECONDS ?= 180

.PHONY: soak
soak:
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --release -p opr-proxy --test soak -- --ignored --nocapture
