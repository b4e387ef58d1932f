//! The opr-proxy binary: configuration (exit 2 on a bad value), start, then wait for
//! SIGTERM/SIGINT (drain, exit 0) or a worker's death (exit 1 so the supervisor restarts).

use opr_proxy::{error, info, Config, Event};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::mpsc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc maps its arenas in 2 MiB-aligned chunks and advises huge pages, so on a host
/// with transparent huge pages (`madvise` or `always`) every touched chunk costs 2 MiB of
/// RSS: 60 MiB instead of 9 MiB with 256 busy connections (loadtest/README.md, "Memory").
/// Opting this process out costs no measurable CPU. Called first thing in `main`, before
/// the workers allocate; a failure (old kernel, seccomp) only leaves the host default.
#[allow(unsafe_code)]
fn disable_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes plain integers and touches no
    // memory of ours; it sets a flag on this process's address space.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() {
    disable_transparent_huge_pages();
    // `opr-proxy healthcheck`: the container HEALTHCHECK, so the image needs no curl.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(healthcheck());
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("opr-proxy: {e}");
            std::process::exit(2);
        }
    };
    log_start(&config);
    let shutdown_timeout = config.shutdown_timeout;

    // Signals are watched by a thread of their own so they work as PID 1 too (where the
    // kernel ignores SIGTERM unless a handler is installed).
    let signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };

    let server = match opr_proxy::run(config) {
        Ok(server) => server,
        Err(e @ opr_proxy::StartError::IoDriver(_)) => {
            eprintln!("opr-proxy: {e}");
            std::process::exit(2);
        }
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    info!(
        "listening on {} with {} worker(s)",
        server.local_addr(),
        server.drivers().len()
    );

    watch_signals(signals, server.event_sender());

    match server.next_event() {
        Event::Signal(signal) => {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            info!(
                "{name} received: draining for up to {} s",
                shutdown_timeout.as_secs()
            );
            server.shutdown();
            info!("stopped");
            std::process::exit(0);
        }
        Event::WorkerExited(id) => {
            error!(
                "worker {id} stopped unexpectedly; exiting so the supervisor restarts the proxy"
            );
            std::process::exit(1);
        }
    }
}

fn log_start(config: &Config) {
    info!(
        "opr-proxy {} starting: {} executor(s), algorithm {}, health checks {}",
        config.version,
        config.executors.len(),
        config.algorithm,
        if config.healthcheck {
            "enabled"
        } else {
            "disabled"
        }
    );
    if let Some(dsn) = &config.connections_state {
        info!(
            "OPR_PROXY_CONNECTIONS_STATE={dsn} is not needed and not used: with \
             OPR_PROXY_ALGORITHM=affinity every replica computes the same executor order for \
             a runtime from OPR_PROXY_EXECUTORS, so no state is shared"
        );
    }
}

/// The first SIGTERM/SIGINT goes to the main thread as an event (drain); a second one
/// while draining exits at once.
fn watch_signals(mut signals: signal_hook::iterator::Signals, events: mpsc::Sender<Event>) {
    std::thread::Builder::new()
        .name("opr-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen > 1 {
                    // A second signal while draining: stop now.
                    eprintln!("opr-proxy: second signal, exiting without draining");
                    std::process::exit(1);
                }
                let _ = events.send(Event::Signal(signal));
            }
        })
        .ok();
}

/// GET /v1/proxy/health on this container's port, at the address the proxy listens on
/// (`OPR_PROXY_HOST`; loopback when it listens on every address); 0 when it answers 200.
fn healthcheck() -> i32 {
    use std::io::{Read, Write};
    use std::time::Duration;
    let port = std::env::var("PORT").unwrap_or_else(|_| "80".into());
    let host = std::env::var("OPR_PROXY_HOST").ok();
    let addr = match opr_proxy::probe_address(host.as_deref(), &port) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("opr-proxy healthcheck: {e}");
            return 1;
        }
    };
    let timeout = Duration::from_secs(3);
    let result = (|| -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(
            b"GET /v1/proxy/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    })();
    match result {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("opr-proxy healthcheck: {addr} did not answer 200");
            1
        }
        Err(e) => {
            eprintln!("opr-proxy healthcheck: {addr}: {e}");
            1
        }
    }
}
