//! Per-core connection balance (reuseport CBPF): with workers pinned, each worker serves
//! the connections that arrive on its CPU. On loopback the CPU that receives a
//! connection is the one its client connected from, so client threads pinned to
//! different CPUs stand in for a NIC's receive queues.

use crate::support;

use std::net::SocketAddr;

use crate::support::{Client, ProxyProcess};

const PER_CPU: usize = 24;

/// Open `PER_CPU` connections from a thread pinned to `cpu`, each answered once (so it
/// was accepted), and return them still open.
fn connect_from(cpu: core_affinity::CoreId, addr: SocketAddr) -> Vec<Client> {
    std::thread::spawn(move || {
        assert!(core_affinity::set_for_current(cpu), "pin the client thread");
        (0..PER_CPU)
            .map(|_| {
                let mut c = Client::connect(addr);
                let r = c.request("GET", "/v1/proxy/health", &[], b"");
                assert_eq!(r.status, 200, "{}", r.text());
                c
            })
            .collect()
    })
    .join()
    .expect("client thread")
}

/// `opr_proxy_worker_connections_{accepted_total,open}` of worker 0 and 1, scraped over
/// a connection made from `cpu` (so it lands on that CPU's worker too).
fn per_worker(cpu: core_affinity::CoreId, addr: SocketAddr, family: &str) -> [u64; 2] {
    let body = std::thread::spawn(move || {
        assert!(core_affinity::set_for_current(cpu));
        let r = Client::connect(addr).request(
            "GET",
            "/v1/proxy/metrics",
            &[("authorization", &support::bearer())],
            b"",
        );
        assert_eq!(r.status, 200);
        r.text()
    })
    .join()
    .expect("scrape thread");
    let read = |worker: usize| -> u64 {
        let prefix = format!("{family}{{worker=\"{worker}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
            .trim()
            .parse()
            .expect("a count")
    };
    [read(0), read(1)]
}

fn two_cpus() -> Option<[core_affinity::CoreId; 2]> {
    match core_affinity::get_core_ids().unwrap_or_default().as_slice() {
        [a, b, ..] => Some([*a, *b]),
        _ => {
            support::skip_unless_ci("this test needs two CPUs in the affinity mask");
            None
        }
    }
}

#[test]
fn each_pinned_worker_serves_the_connections_of_its_cpu() {
    let Some([cpu0, cpu1]) = two_cpus() else {
        return;
    };
    let executor = support::mock("a");
    let proxy = ProxyProcess::start(&[executor.hostname()], &[("OPR_PROXY_CORES", "2")]);
    assert!(
        proxy.log().contains("reuseport CBPF"),
        "the program is attached and logged:\n{}",
        proxy.log()
    );
    let on_cpu0 = connect_from(cpu0, proxy.addr);
    let on_cpu1 = connect_from(cpu1, proxy.addr);
    // The scrape's own connection comes from CPU 0: one more for worker 0.
    let accepted = per_worker(
        cpu0,
        proxy.addr,
        "opr_proxy_worker_connections_accepted_total",
    );
    assert_eq!(
        accepted,
        [PER_CPU as u64 + 1, PER_CPU as u64],
        "{}",
        proxy.log()
    );
    let open = per_worker(cpu1, proxy.addr, "opr_proxy_worker_connections_open");
    // Worker 1 also serves this scrape's connection; the first scrape's has closed (or
    // is closing) on worker 0.
    assert_eq!(open[1], PER_CPU as u64 + 1);
    assert!(open[0] >= PER_CPU as u64, "{open:?}");
    drop((on_cpu0, on_cpu1));
}

/// Start the proxy with `env`, check its start log says `logged`, and assert that
/// connections all made from `cpu` land on both workers (some on each).
fn assert_one_cpu_spreads_over_both(
    cpu: core_affinity::CoreId,
    env: &[(&str, &str)],
    logged: &str,
) {
    let executor = support::mock("a");
    let proxy = ProxyProcess::start(&[executor.hostname()], env);
    assert!(proxy.log().contains(logged), "{}", proxy.log());
    let clients = connect_from(cpu, proxy.addr);
    let accepted = per_worker(
        cpu,
        proxy.addr,
        "opr_proxy_worker_connections_accepted_total",
    );
    // 25 connections over two listeners: all on one worker has odds 2^-24.
    assert_eq!(accepted[0] + accepted[1], PER_CPU as u64 + 1);
    assert!(accepted[0] > 0 && accepted[1] > 0, "{accepted:?}");
    drop(clients);
}

#[test]
fn with_the_kernels_hash_one_cpus_connections_spread_over_both_workers() {
    let Some([cpu0, _]) = two_cpus() else {
        return;
    };
    assert_one_cpu_spreads_over_both(
        cpu0,
        &[
            ("OPR_PROXY_CORES", "2"),
            ("OPR_PROXY_CONNECTION_BALANCE", "hash"),
        ],
        "by the kernel's hash (OPR_PROXY_CONNECTION_BALANCE=hash)",
    );
}

#[test]
fn workers_sharing_a_cpu_share_its_connections() {
    let Some([cpu0, _]) = two_cpus() else {
        return;
    };
    // Both workers are on CPU 0: they share its connections at random.
    assert_one_cpu_spreads_over_both(
        cpu0,
        &[("OPR_PROXY_CORES", "1"), ("OPR_PROXY_WORKER_PER_CORE", "2")],
        "reuseport CBPF",
    );
}
