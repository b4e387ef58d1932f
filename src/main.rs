//! The opr-proxy binary: configuration (exit 2 on a bad value), start, then wait for
//! SIGTERM/SIGINT (drain, exit 0) or a worker's death (exit 1 so the supervisor restarts).

use opr_proxy::config::Config;
use opr_proxy::{error, info, Event};
use signal_hook::consts::{SIGINT, SIGTERM};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("opr-proxy: {e}");
            std::process::exit(2);
        }
    };
    info!(
        "opr-proxy {} starting: {} executor(s), algorithm {:?}, health checks {}",
        config.version,
        config.executors.len(),
        config.algorithm,
        if config.healthcheck {
            "enabled"
        } else {
            "disabled"
        }
    );
    let shutdown_timeout = config.shutdown_timeout;

    // Signals are watched by a thread of their own so they work as PID 1 too (where the
    // kernel ignores SIGTERM unless a handler is installed).
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };

    let server = match opr_proxy::run(config) {
        Ok(server) => server,
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

    let events = server.event_sender();
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
