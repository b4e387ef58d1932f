# opr-proxy: drop-in replacement for the openruntimes/proxy image.
# Build:  docker build -t opr-proxy .
# io_uring: Docker's default seccomp profile blocks it and opr-proxy falls back to epoll
# (logged per worker). To use io_uring, run with a profile that allows io_uring_setup,
# io_uring_enter and io_uring_register, e.g. `--security-opt seccomp=unconfined`.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY loadtest loadtest
RUN cargo build --release --locked -p opr-proxy --bin opr-proxy \
    && strip target/release/opr-proxy

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home opr
COPY --from=build /src/target/release/opr-proxy /usr/local/bin/opr-proxy
USER opr
# The original listens on 80; Docker lets non-root bind low ports inside the container
# (net.ipv4.ip_unprivileged_port_start=0 is Docker's default since 20.10).
ENV PORT=80
EXPOSE 80
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/opr-proxy", "healthcheck"]
# The binary is PID 1: it handles SIGTERM/SIGINT itself (drain, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/opr-proxy"]
