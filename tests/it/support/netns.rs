//! Runs one test inside a private network and mount namespace whose `/etc/hosts` names
//! loopback addresses (`unshare --net --mount`, a hosts file bind-mounted over
//! `/etc/hosts`, `lo` up), so executors can be reached by the names a deployment uses.

use std::process::Command;

/// Set (to the hosts file's path) in the re-run test process inside the namespace.
const INSIDE: &str = "OPR_TEST_NETNS_HOSTS";

/// Called first by a test: `true` inside the namespace (the hosts file is in place and
/// `lo` is up: run the test's body); `false` in the outer process, after it re-ran the
/// test `name` (its path in the test binary) inside a namespace and checked that it
/// passed. Where namespaces are unavailable the test is skipped with a line on stderr,
/// except under CI (`CI` set), where that fails.
pub fn enter(name: &str, hosts: &[(&str, &str)]) -> bool {
    if let Ok(path) = std::env::var(INSIDE) {
        setup_inside(&path);
        return true;
    }
    let Some(unshare) = available() else {
        let why = "needs `unshare` with network and mount namespaces (root, or unprivileged \
                   user namespaces) and `ip`";
        super::skip_unless_ci(&format!("{name} {why}"));
        return false;
    };
    let path = std::env::temp_dir().join(format!("opr-netns-{}-hosts", std::process::id()));
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (name, ip) in hosts {
        text.push_str(&format!("{ip} {name}\n"));
    }
    std::fs::write(&path, text).expect("write the hosts file");
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new("unshare")
        .args(&unshare)
        .arg("--")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, &path)
        .output()
        .expect("run unshare");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} inside the namespace failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprint!("{stderr}");
    false
}

/// The `unshare` arguments that work here: plain namespaces as root, else inside a user
/// namespace that maps us to root.
fn available() -> Option<Vec<&'static str>> {
    let works = |args: &[&str]| {
        Command::new("unshare")
            .args(args)
            .args(["--", "ip", "link", "set", "lo", "up"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let tries: [&[&'static str]; 2] = [
        &["--net", "--mount"],
        &["--user", "--map-root-user", "--net", "--mount"],
    ];
    tries.into_iter().find(|t| works(t)).map(<[&str]>::to_vec)
}

fn setup_inside(hosts: &str) {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output();
        let out = out.unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // `unshare --mount` made mounts private: this one stays in the namespace.
    run("mount", &["--bind", hosts, "/etc/hosts"]);
    run("ip", &["link", "set", "lo", "up"]);
}
