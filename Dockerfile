# syntax=docker/dockerfile:1
# opr-proxy: drop-in replacement for the openruntimes/proxy image.
#   docker build -t opr-proxy .
#   docker build -t opr-proxy --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
# io_uring: Docker's and podman's default seccomp profiles refuse it and opr-proxy falls
# back to epoll (logged per worker). deploy/seccomp.json is the default profile plus
# io_uring_setup, io_uring_enter and io_uring_register:
#   docker run --security-opt seccomp=deploy/seccomp.json …
#
# Runtime base: distroless `cc` (Debian 12), nonroot. It holds exactly what the binary
# links against (glibc, libgcc_s; `ldd target/release/opr-proxy`) plus CA certificates and
# tzdata, no shell, no package manager. Chosen over `scratch` with a static (musl) build:
# the glibc binary is the one the test suite, the load tests and the container test
# (tests/container.rs: FROM scratch with the same libraries) run; a musl build would be a
# second, untested binary, its resolver handles search domains and TCP fallback
# differently from glibc's (cluster DNS), and the size saved is ~20 MB uncompressed.
# The builder is Debian 12 too, so its glibc matches the runtime's.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The context is only the manifests and sources (.dockerignore); the workspace member
# loadtest/ and benches/ are needed for cargo to read the manifest, not to build.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY loadtest loadtest
# --locked: exactly the dependency versions of Cargo.lock, or fail.
# The cache mounts keep the registry and target/ between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p opr-proxy --bin opr-proxy \
    && install -D -m 0755 target/release/opr-proxy /out/opr-proxy \
    && strip /out/opr-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="opr-proxy" \
      org.opencontainers.image.description="Drop-in, thread-per-core io_uring replacement for Open Runtimes Proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/opr-proxy /usr/local/bin/opr-proxy
# distroless's nonroot user, numeric so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# The original listens on 80. Docker (20.10+) sets net.ipv4.ip_unprivileged_port_start=0
# in a container's own network namespace, so the non-root user may bind it; podman (4.3)
# does not: pass `--sysctl net.ipv4.ip_unprivileged_port_start=0` (deploy/docker-compose.yml
# does) or set PORT above 1023. Kubernetes: PORT=8080, as deploy/kubernetes/ does.
ENV PORT=80
EXPOSE 80
# `opr-proxy healthcheck` GETs /v1/proxy/health on 127.0.0.1:$PORT (exit 0 on 200): no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/opr-proxy", "healthcheck"]
# The binary is PID 1 and handles SIGTERM itself: stop accepting, drain in-flight
# requests (OPR_PROXY_SHUTDOWN_TIMEOUT, 30 s), exit 0. Give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/opr-proxy"]
