//! The binary as a container entrypoint, in real containers: podman with runc, no Docker
//! engine and nothing pulled (`make container-test`, which passes `make build`'s binary
//! in `OPR_CONTAINER_BIN`: release by default, the suite's dev build under CI). The image
//! is the release Dockerfile's final stage with its base
//! replaced by `scratch` plus the libraries `ldd` lists (what distroless `cc` provides),
//! built once and used by every container below:
//!
//! - podman's default seccomp profile, host network, the original README's `.env`
//!   (`deploy/.env`) with the executors pointed at two mocks on the host: io_uring is
//!   refused and logged, the proxy serves on epoll; `/v1/proxy/health`, forwarding to both
//!   executors, the key from `.env`, podman's HEALTHCHECK status, and `podman stop`
//!   (SIGTERM) draining a request in flight before exit 0;
//! - `--security-opt seccomp=unconfined`: io_uring;
//! - `deploy/seccomp.json` as deploy/docker-compose.yml runs it (own network namespace,
//!   port 80 as the non-root user through the sysctl, no capabilities, read-only root):
//!   io_uring, and healthy by the image's HEALTHCHECK;
//! - the Kubernetes profile (`deploy/kubernetes/seccomp/opr-proxy.json`) with the
//!   Deployment's restrictions: io_uring, forwarding.
//!
//! Ignored by the plain suite (it needs podman and builds an image); skipped with a
//! message where podman cannot run containers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

/// The settings found to work on these machines (docs/development.md "Containers here"): crun refuses the hybrid cgroup
/// layout, and vfs needs no kernel overlay support.
const GLOBAL: &[&str] = &[
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--storage-driver",
    "vfs",
];
/// rlimits can be lowered here, not raised.
const LIMITS: &[&str] = &[
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(GLOBAL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("podman runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn skip(why: &str) {
    eprintln!("SKIP tests/container.rs: {why}");
    eprintln!("     (needs podman and runc: apt-get install podman runc; .ci/run installs them)");
}

/// The image and containers of this run, removed however the test ends.
struct Podman {
    image: String,
    prefix: String,
    containers: Vec<String>,
    dir: PathBuf,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman(&["rm", "-f", "-t", "0", c]);
        }
        let _ = podman(&["rmi", "-f", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Podman {
    /// `podman run -d` a container of the image; returns its name.
    fn run(&mut self, label: &str, args: &[&str], env: &[(&str, String)]) -> String {
        let name = format!("{}-{label}", self.prefix);
        self.containers.push(name.clone());
        let mut all: Vec<String> = ["run", "-d", "--name", &name]
            .iter()
            .chain(LIMITS)
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        for (k, v) in env {
            all.push("-e".into());
            all.push(format!("{k}={v}"));
        }
        all.push(self.image.clone());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = podman(&refs);
        assert!(out.status.success(), "podman run {label}: {}", text(&out));
        name
    }

    /// The container's output so far (the proxy logs to stderr).
    fn logs(&self, name: &str) -> String {
        text(&podman(&["logs", name]))
    }

    /// Wait for `listening on` (the first health round done, the listeners bound).
    fn wait_listening(&self, name: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs(name);
            if logs.contains("listening on") {
                return logs;
            }
            assert!(Instant::now() < end, "{name} did not start: {logs}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        let out = podman(&["inspect", "--format", format, name]);
        assert!(out.status.success(), "inspect {name}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman stop` (SIGTERM, the image's STOPSIGNAL) and the exit code.
    fn stop(&self, name: &str) -> String {
        let out = podman(&["stop", "-t", "20", name]);
        assert!(out.status.success(), "stop {name}: {}", text(&out));
        self.inspect(name, "{{.State.ExitCode}}")
    }

    /// One HEALTHCHECK run (podman schedules them with systemd timers, absent here) and
    /// the status podman then reports.
    fn health(&self, name: &str) -> String {
        let out = podman(&["healthcheck", "run", name]);
        assert!(out.status.success(), "healthcheck {name}: {}", text(&out));
        self.inspect(name, "{{.State.Health.Status}}")
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn port_of(m: &MockExecutor) -> String {
    m.hostname().rsplit(':').next().unwrap().to_string()
}

/// The release Dockerfile's last stage on `scratch` with the binary's libraries (and the
/// loader) at the paths `ldd` gives; the binary comes from the context, not a build stage.
fn containerfile(root: &Path, dir: &Path, bin: &Path) -> String {
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd runs");
    assert!(
        ldd.status.success(),
        "ldd {}: {}",
        bin.display(),
        text(&ldd)
    );
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)"
        if let Some(lib) = line.split_whitespace().find(|t| t.starts_with('/')) {
            let to = dir.join("rootfs").join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
    }
    std::fs::copy(bin, dir.join("opr-proxy")).expect("copy the binary");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let copy = "COPY --from=build /out/opr-proxy /usr/local/bin/opr-proxy";
    let stage = lines[last_from + 1..].join("\n");
    assert!(
        stage.contains(copy),
        "the Dockerfile's last stage no longer has `{copy}`"
    );
    format!(
        "FROM scratch\nCOPY rootfs/ /\n{}\n",
        stage.replace(copy, "COPY opr-proxy /usr/local/bin/opr-proxy")
    )
}

fn env_file(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .expect(".env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get(port: u16, path: &str, key: &str) -> Response {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Client::connect(addr).request(
        "GET",
        path,
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    )
}

#[test]
#[ignore = "needs podman + runc and the proxy binary: make container-test"]
fn release_image_runs_under_podman() {
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = match std::env::var_os("OPR_CONTAINER_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            eprintln!("OPR_CONTAINER_BIN is not set: using the test build's binary");
            PathBuf::from(env!("CARGO_BIN_EXE_opr-proxy"))
        }
    };
    match Command::new("podman").args(GLOBAL).arg("info").output() {
        Err(e) => return skip(&format!("podman not found ({e})")),
        Ok(out) if !out.status.success() => {
            return skip(&format!("`podman info` failed: {}", text(&out)))
        }
        Ok(_) => {}
    }

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let id = format!("{}-{nanos}", std::process::id());
    let dir = std::env::temp_dir().join(format!("opr-container-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut pm = Podman {
        image: format!("localhost/opr-proxy-test:{id}"),
        prefix: format!("opr-proxy-test-{id}"),
        containers: Vec::new(),
        dir: dir.clone(),
    };
    std::fs::write(dir.join("Containerfile"), containerfile(&root, &dir, &bin)).unwrap();
    // Docker format keeps HEALTHCHECK (the OCI image format has no field for it).
    let out = podman(&[
        "build",
        "--format",
        "docker",
        "-t",
        &pm.image,
        "-f",
        dir.join("Containerfile").to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "podman build: {}", text(&out));
    assert_eq!(
        pm.inspect(
            &pm.image,
            "{{.Config.User}} {{.Config.StopSignal}} {{.Config.Entrypoint}} {{.HealthCheck.Test}}"
        ),
        "65532:65532 SIGTERM [/usr/local/bin/opr-proxy] [CMD /usr/local/bin/opr-proxy healthcheck]"
    );
    // Can this machine run a container at all? `healthcheck` against a closed port exits
    // 1 from the binary; podman's own failures are 125–127.
    let probe = podman(&[
        "run",
        "--rm",
        "--network",
        "host",
        LIMITS[0],
        LIMITS[1],
        LIMITS[2],
        LIMITS[3],
        "-e",
        "PORT=1",
        &pm.image,
        "healthcheck",
    ]);
    match probe.status.code() {
        Some(1) => {}
        Some(125..=127) | None => {
            return skip(&format!(
                "podman cannot run a container here: {}",
                text(&probe)
            ))
        }
        other => panic!("probe exited {other:?}: {}", text(&probe)),
    }
    eprintln!("image built and probed in {:?}", started.elapsed());

    let w1 = mock("whoami1");
    let w2 = mock("whoami2");
    let dotenv = root.join("deploy/.env");
    let key = env_file(&dotenv)["OPR_PROXY_SECRET"].clone();
    // The original's executors by the same names, resolved in the container (its
    // /etc/hosts), on the mocks' ports.
    let executors = format!("whoami1:{},whoami2:{}", port_of(&w1), port_of(&w2));
    let hosts = [
        "--add-host",
        "whoami1:127.0.0.1",
        "--add-host",
        "whoami2:127.0.0.1",
    ];
    let env_file_arg = format!("--env-file={}", dotenv.display());

    // 1. Default seccomp profile: epoll.
    let port_a = free_port();
    let mut args = vec!["--network", "host", &env_file_arg];
    args.extend(hosts);
    let a = pm.run(
        "default",
        &args,
        &[
            ("PORT", port_a.to_string()),
            ("OPR_PROXY_EXECUTORS", executors.clone()),
        ],
    );

    // 2. to 4. start now, checked after the first.
    let port_b = free_port();
    let mut args = vec![
        "--network",
        "host",
        "--security-opt",
        "seccomp=unconfined",
        &env_file_arg,
    ];
    args.extend(hosts);
    let b = pm.run(
        "unconfined",
        &args,
        &[
            ("PORT", port_b.to_string()),
            ("OPR_PROXY_EXECUTORS", executors.clone()),
        ],
    );
    let compose_profile = format!("seccomp={}", root.join("deploy/seccomp.json").display());
    let mut args = vec![
        "--network",
        "none",
        "--security-opt",
        &compose_profile,
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
        "--read-only",
        "--sysctl",
        "net.ipv4.ip_unprivileged_port_start=0",
        &env_file_arg,
    ];
    args.extend(hosts);
    let c = pm.run("compose", &args, &[]);
    let port_d = free_port();
    let k8s_profile = format!(
        "seccomp={}",
        root.join("deploy/kubernetes/seccomp/opr-proxy.json")
            .display()
    );
    let d = pm.run(
        "kubernetes",
        &[
            "--network",
            "host",
            "--security-opt",
            &k8s_profile,
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "ALL",
            "--read-only",
        ],
        &[
            ("PORT", port_d.to_string()),
            ("OPR_PROXY_EXECUTORS", w1.hostname()),
            ("OPR_PROXY_SECRET", key.clone()),
        ],
    );

    let logs = pm.wait_listening(&a);
    assert!(
        logs.contains("io_uring refused (") && logs.contains("falling back to epoll"),
        "the refusal is logged: {logs}"
    );
    assert!(logs.contains("serving with epoll"), "{logs}");
    assert!(!logs.contains("serving with io_uring"), "{logs}");
    assert!(
        logs.contains(&format!("listening on 0.0.0.0:{port_a} with")),
        "{logs}"
    );
    let health = get(port_a, "/v1/proxy/health", "");
    assert_eq!((health.status, health.text().as_str()), (200, "OK"));
    assert_eq!(get(port_a, "/v1/ping", "wrong").status, 401);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = get(port_a, "/v1/ping", &key);
        assert_eq!(r.status, 200, "{}", r.text());
        // Dev mode (the .env's OPR_PROXY_ENV=development) tells the route: the executor
        // by its name from OPR_PROXY_EXECUTORS, resolved inside the container.
        let route = r.header("x-opr-route").unwrap_or("").to_string();
        let name = r.executor();
        assert!(
            executors
                .split(',')
                .any(|e| e.starts_with(&name) && route.starts_with(&format!("executor={e};"))),
            "{name} answered, route {route:?}"
        );
        seen.insert(r.executor());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["whoami1", "whoami2"],
        "random over both executors"
    );
    assert_eq!(pm.health(&a), "healthy");
    // SIGTERM with a request in flight: it is answered, then exit 0.
    let before = w1.requests() + w2.requests();
    let slow_key = key.clone();
    let slow = std::thread::spawn(move || get(port_a, "/v1/sleep?ms=1500", &slow_key));
    assert!(eventually(Duration::from_secs(5), || w1.requests()
        + w2.requests()
        > before));
    assert_eq!(pm.stop(&a), "0", "{}", pm.logs(&a));
    assert_eq!(slow.join().unwrap().status, 200, "drained");
    let logs = pm.logs(&a);
    assert!(
        logs.contains("SIGTERM received: draining") && logs.contains("INFO stopped"),
        "{logs}"
    );
    eprintln!(
        "default profile: epoll, served, healthy, drained ({:?})",
        started.elapsed()
    );

    for (name, port) in [(&b, Some(port_b)), (&c, None), (&d, Some(port_d))] {
        let logs = pm.wait_listening(name);
        assert!(logs.contains("serving with io_uring"), "{name}: {logs}");
        assert!(!logs.contains("refused"), "{name}: {logs}");
        match port {
            Some(port) => {
                let r = get(port, "/v1/ping", &key);
                assert_eq!(r.status, 200, "{name}: {}", r.text());
                assert!(r.executor().starts_with("whoami"));
            }
            // Its own network namespace: port 80 as user 65532, reached by the
            // HEALTHCHECK from inside.
            None => {
                assert!(logs.contains("listening on 0.0.0.0:80 with"), "{logs}");
                assert_eq!(pm.health(name), "healthy");
            }
        }
        assert_eq!(pm.stop(name), "0", "{}", pm.logs(name));
    }
    eprintln!(
        "unconfined, deploy/seccomp.json, Kubernetes profile: io_uring ({:?} in all)",
        started.elapsed()
    );
}
