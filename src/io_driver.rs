//! Which io driver the workers get, decided once before they start: the kernel's
//! io_uring probe (`IORING_REGISTER_PROBE`), its version and `RLIMIT_MEMLOCK` decide
//! io_uring, epoll, or a refused start when `OPR_PROXY_IO_DRIVER=io_uring` cannot work.

use crate::config::{ConfigError, IoDriver, OPR_PROXY_IO_DRIVER};
use io_uring::opcode;

/// Entries of each worker's submission queue (the completion queue gets twice as many).
pub(crate) const RING_ENTRIES: u32 = 1024;

/// A kernel version, `(major, minor)`.
pub(crate) type Version = (u32, u32);

/// An io_uring operation the proxy submits (through monoio 0.2.4) and the Linux version
/// that added it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub name: &'static str,
    pub code: u8,
    pub since: Version,
}

const fn op(name: &'static str, code: u8, since: Version) -> Op {
    Op { name, code, since }
}

/// Without any of these a worker on io_uring cannot serve: accept and connect for
/// sockets; send and recv for every read and write on them; poll_add for
/// `readable()` (client gone while the executor works); timeout for the runtime's timers;
/// async_cancel when a timeout drops an operation; close because monoio closes
/// descriptors with the ring (an unsupported close would leak every socket); read for
/// the eventfd that wakes a worker from another thread (health snapshots).
pub(crate) const REQUIRED: [Op; 9] = [
    op("accept", opcode::Accept::CODE, (5, 5)),
    op("connect", opcode::Connect::CODE, (5, 5)),
    op("async_cancel", opcode::AsyncCancel::CODE, (5, 5)),
    op("send", opcode::Send::CODE, (5, 6)),
    op("recv", opcode::Recv::CODE, (5, 6)),
    op("close", opcode::Close::CODE, (5, 6)),
    op("read", opcode::Read::CODE, (5, 6)),
    op("timeout", opcode::Timeout::CODE, (5, 4)),
    op("poll_add", opcode::PollAdd::CODE, (5, 1)),
];

/// Only for bodies moved socket → pipe → socket (`OPR_PROXY_SPLICE`); without it the
/// bodies are copied through a buffer and io_uring still serves.
pub(crate) const SPLICE: Op = op("splice", opcode::Splice::CODE, (5, 7));

/// `IORING_REGISTER_PROBE` itself came with 5.6: a kernel that refuses it lacks every
/// operation added in 5.6 too.
const PROBE_SINCE: Version = (5, 6);
/// From 5.12 rings are charged to the memory cgroup, not to `RLIMIT_MEMLOCK`.
const MEMLOCK_UNTIL: Version = (5, 12);

/// What the decision looks at; `gather` reads it from this kernel, tests write it.
#[derive(Clone, Debug)]
pub(crate) struct Facts {
    pub configured: IoDriver,
    /// Setting up a small ring: `Err` with the error when refused (seccomp,
    /// `kernel.io_uring_disabled`, out of locked memory); `Ok(None)` when the ring works
    /// but the probe is refused (before 5.6); `Ok(Some(codes))`: the supported opcodes
    /// among `REQUIRED` and `SPLICE`.
    pub probe: Result<Option<Vec<u8>>, String>,
    /// From `/proc/sys/kernel/osrelease`; `None` when unreadable.
    pub kernel: Option<Version>,
    /// `RLIMIT_MEMLOCK` (soft) in bytes; `None`: unlimited or unknown.
    pub memlock: Option<u64>,
    /// `CAP_IPC_LOCK` in the effective set: rings are then never charged.
    pub ipc_lock: bool,
    pub workers: usize,
}

/// What the workers do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Build io_uring rings (each worker still falls back to epoll under `auto` if its
    /// own ring setup fails); `splice` false when the kernel lacks the splice operation.
    IoUring {
        splice: bool,
    },
    Epoll,
    /// `OPR_PROXY_IO_DRIVER=io_uring` where it cannot serve: exit 2 with this error.
    Refuse(ConfigError),
}

/// The plan and the line logged once at start (`warn` when io_uring was given up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub plan: Plan,
    pub line: String,
    pub warn: bool,
}

/// Locked memory one ring of `entries` is charged before 5.12: the rings (header,
/// completion entries of 16 bytes, the submission index array) and the submission
/// entries (64 bytes each), each rounded up to a power-of-two number of 4 KiB pages as
/// the kernel allocates them. 1024 entries: 64 KiB + 64 KiB.
pub(crate) fn ring_memlock_bytes(entries: u32) -> u64 {
    fn pow2_pages(bytes: u64) -> u64 {
        bytes.div_ceil(4096).next_power_of_two() * 4096
    }
    let (sq, cq) = (u64::from(entries), 2 * u64::from(entries));
    // struct io_rings: two cache-line-aligned heads and counters before the entries.
    let rings = (128 + cq * 16).next_multiple_of(64) + sq * 4;
    pow2_pages(rings) + pow2_pages(sq * 64)
}

fn kernel_name(kernel: Option<Version>) -> String {
    match kernel {
        Some((major, minor)) => format!("Linux {major}.{minor}"),
        None => "this kernel".to_string(),
    }
}

/// "accept, connect, async_cancel (Linux 5.5), send, recv (Linux 5.6)".
fn describe(missing: &[Op]) -> String {
    let mut parts = Vec::new();
    for (i, op) in missing.iter().enumerate() {
        let last_of_version = missing.get(i + 1).is_none_or(|next| next.since != op.since);
        if last_of_version {
            let (major, minor) = op.since;
            parts.push(format!("{} (Linux {major}.{minor})", op.name));
        } else {
            parts.push(op.name.to_string());
        }
    }
    parts.join(", ")
}

fn kib(bytes: u64) -> u64 {
    bytes / 1024
}

/// Under `auto` fall back to epoll with a warning; under `io_uring`, refuse to start.
fn give_up(configured: IoDriver, why: String) -> Decision {
    match configured {
        IoDriver::IoUring => {
            let allowed = format!("{why}; allowed values are auto (falls back to epoll) and epoll");
            Decision {
                plan: Plan::Refuse(ConfigError {
                    variable: OPR_PROXY_IO_DRIVER,
                    value: "io_uring".into(),
                    allowed,
                }),
                line: why,
                warn: true,
            }
        }
        _ => Decision {
            plan: Plan::Epoll,
            line: format!("io driver: {why}; falling back to epoll"),
            warn: true,
        },
    }
}

/// Why the workers' rings cannot get their locked memory, if they cannot: before 5.12
/// every ring is charged to the user's RLIMIT_MEMLOCK unless the process holds
/// CAP_IPC_LOCK; 64 KiB (a common default) is less than one ring.
fn memlock_shortfall(facts: &Facts, on: &str) -> Option<String> {
    let charged = facts.kernel.is_some_and(|k| k < MEMLOCK_UNTIL) && !facts.ipc_lock;
    let per_ring = ring_memlock_bytes(RING_ENTRIES);
    let need = per_ring * facts.workers.max(1) as u64;
    let limit = facts.memlock.filter(|&limit| charged && need > limit)?;
    Some(format!(
        "io_uring rings need {} KiB of locked memory ({} worker(s) × {} KiB; {on} \
         charges them to RLIMIT_MEMLOCK before 5.12) but the limit is {} KiB \
         (raise it: ulimit -l, LimitMEMLOCK=, --ulimit memlock=)",
        kib(need),
        facts.workers.max(1),
        kib(per_ring),
        kib(limit)
    ))
}

/// The decision, from facts alone (no system call), so every kernel can be tested here.
pub(crate) fn decide(facts: &Facts) -> Decision {
    let configured = facts.configured;
    let on = kernel_name(facts.kernel);
    let info = |plan, line: String| Decision {
        plan,
        line,
        warn: false,
    };
    let give_up = |why: String| give_up(configured, why);
    if configured == IoDriver::Epoll {
        return info(
            Plan::Epoll,
            "io driver: epoll (OPR_PROXY_IO_DRIVER=epoll)".into(),
        );
    }

    if let Some(why) = memlock_shortfall(facts, &on) {
        return give_up(why);
    }

    let supported = match &facts.probe {
        // Refused outright: the workers' own ring setup says why, as it always has
        // (`auto`: epoll; `io_uring`: the start fails with the setup error).
        Err(e) if configured == IoDriver::IoUring => {
            return info(
                Plan::IoUring { splice: true },
                format!("io driver: io_uring setup refused ({e})"),
            );
        }
        Err(e) => {
            return Decision {
                plan: Plan::Epoll,
                line: format!("io_uring refused ({e}); falling back to epoll"),
                warn: false,
            };
        }
        Ok(probe) => probe,
    };
    let has = |op: &Op| match supported {
        Some(codes) => codes.contains(&op.code),
        // No probe: everything from 5.6 on is missing; older operations are there when
        // the version says so (and assumed there when it is unknown).
        None => op.since < PROBE_SINCE && facts.kernel.is_none_or(|k| k >= op.since),
    };
    let mut missing: Vec<Op> = REQUIRED.iter().copied().filter(|op| !has(op)).collect();
    missing.sort_by_key(|op| op.since);
    if !missing.is_empty() {
        let probe = if supported.is_none() {
            " (no IORING_REGISTER_PROBE: before Linux 5.6)"
        } else {
            ""
        };
        return give_up(format!(
            "{on}'s io_uring lacks {}{probe}",
            describe(&missing)
        ));
    }
    let all: Vec<&str> = REQUIRED.iter().map(|op| op.name).collect();
    if has(&SPLICE) {
        info(
            Plan::IoUring { splice: true },
            format!(
                "io driver: io_uring ({on}: probe found {} and splice)",
                all.join(", ")
            ),
        )
    } else {
        info(
            Plan::IoUring { splice: false },
            format!(
                "io driver: io_uring ({on}: probe found {}; no {}, so bodies are copied, not spliced)",
                all.join(", "),
                describe(&[SPLICE])
            ),
        )
    }
}

/// Read the facts from this process and kernel. Sets up (and drops) one 2-entry ring
/// unless epoll was configured.
pub(crate) fn gather(configured: IoDriver, workers: usize) -> Facts {
    let probe = if configured == IoDriver::Epoll {
        Ok(Some(Vec::new()))
    } else {
        probe_ops()
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Facts {
        configured,
        probe,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|s| parse_version(&s)),
        memlock: std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| parse_memlock(&s)),
        ipc_lock: parse_ipc_lock(&status),
        workers,
    }
}

/// On a thread of its own: tearing a ring down can leave the kernel work queued on the
/// thread that made it (task work, delivered like a signal), which interrupts that
/// thread's next blocking call with a timeout (`EINTR`); the caller is the main thread,
/// or a test's client thread.
fn probe_ops() -> Result<Option<Vec<u8>>, String> {
    std::thread::Builder::new()
        .name("opr-uring-probe".into())
        .spawn(probe_ops_here)
        .map_err(|e| e.to_string())?
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
}

fn probe_ops_here() -> Result<Option<Vec<u8>>, String> {
    let ring = io_uring::IoUring::new(2).map_err(|e| e.to_string())?;
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return Ok(None);
    }
    let ops = REQUIRED.iter().chain([&SPLICE]);
    Ok(Some(
        ops.filter(|op| probe.is_supported(op.code))
            .map(|op| op.code)
            .collect(),
    ))
}

/// "6.1.0-50-cloud-amd64" → (6, 1).
fn parse_version(release: &str) -> Option<Version> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The soft limit of "Max locked memory" in `/proc/self/limits` (bytes, or `unlimited`).
fn parse_memlock(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    line["Max locked memory".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bit 14 (`CAP_IPC_LOCK`) of `CapEff:` in `/proc/self/status`.
fn parse_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(ops: &[Op]) -> Vec<u8> {
        ops.iter().map(|op| op.code).collect()
    }

    /// Every operation a kernel of `version` has, as its probe would say.
    fn probe_of(version: Version) -> Option<Vec<u8>> {
        let ops: Vec<Op> = REQUIRED
            .iter()
            .chain([&SPLICE])
            .copied()
            .filter(|op| op.since <= version)
            .collect();
        Some(codes(&ops))
    }

    fn facts(configured: IoDriver, kernel: Version, probe: Option<Vec<u8>>) -> Facts {
        Facts {
            configured,
            probe: Ok(probe),
            kernel: Some(kernel),
            memlock: Some(8 << 20),
            ipc_lock: false,
            workers: 2,
        }
    }

    #[test]
    fn linux_6_has_everything() {
        let d = decide(&facts(IoDriver::Auto, (6, 1), probe_of((6, 1))));
        assert_eq!(d.plan, Plan::IoUring { splice: true });
        assert!(!d.warn);
        assert_eq!(
            d.line,
            "io driver: io_uring (Linux 6.1: probe found accept, connect, async_cancel, send, \
             recv, close, read, timeout, poll_add and splice)"
        );
        let d = decide(&facts(IoDriver::IoUring, (6, 12), probe_of((6, 12))));
        assert_eq!(d.plan, Plan::IoUring { splice: true });
    }

    #[test]
    fn linux_5_4_has_no_accept_auto_falls_back_and_io_uring_refuses() {
        // 5.4 answers IORING_REGISTER_PROBE with EINVAL (it came in 5.6).
        let d = decide(&facts(IoDriver::Auto, (5, 4), None));
        assert_eq!(d.plan, Plan::Epoll);
        assert!(d.warn);
        assert_eq!(
            d.line,
            "io driver: Linux 5.4's io_uring lacks accept, connect, async_cancel (Linux 5.5), \
             send, recv, close, read (Linux 5.6) (no IORING_REGISTER_PROBE: before Linux 5.6); \
             falling back to epoll"
        );
        let d = decide(&facts(IoDriver::IoUring, (5, 4), None));
        let Plan::Refuse(e) = d.plan else {
            panic!("{d:?}")
        };
        assert_eq!(
            e.to_string(),
            "invalid OPR_PROXY_IO_DRIVER=\"io_uring\": Linux 5.4's io_uring lacks accept, \
             connect, async_cancel (Linux 5.5), send, recv, close, read (Linux 5.6) (no \
             IORING_REGISTER_PROBE: before Linux 5.6); allowed values are auto (falls back \
             to epoll) and epoll"
        );
    }

    #[test]
    fn a_probe_without_accept_is_named_even_on_a_newer_version() {
        // A backport kernel can report any version: the probe, not the version, decides.
        let mut ops = probe_of((6, 1)).unwrap();
        ops.retain(|&c| c != opcode::Accept::CODE);
        let d = decide(&facts(IoDriver::Auto, (6, 1), Some(ops)));
        assert_eq!(d.plan, Plan::Epoll);
        assert!(
            d.line.contains("lacks accept (Linux 5.5); falling back"),
            "{}",
            d.line
        );
    }

    #[test]
    fn linux_5_6_has_no_splice_only_turns_splice_off() {
        for configured in [IoDriver::Auto, IoDriver::IoUring] {
            let d = decide(&facts(configured, (5, 6), probe_of((5, 6))));
            assert_eq!(d.plan, Plan::IoUring { splice: false });
            assert!(!d.warn);
            assert!(
                d.line
                    .ends_with("; no splice (Linux 5.7), so bodies are copied, not spliced)"),
                "{}",
                d.line
            );
        }
        let d = decide(&facts(IoDriver::Auto, (5, 7), probe_of((5, 7))));
        assert_eq!(d.plan, Plan::IoUring { splice: true });
    }

    #[test]
    fn memlock_too_small_before_5_12() {
        let mut f = facts(IoDriver::Auto, (5, 10), probe_of((5, 10)));
        f.memlock = Some(64 * 1024);
        let d = decide(&f);
        assert_eq!(d.plan, Plan::Epoll);
        assert_eq!(
            d.line,
            "io driver: io_uring rings need 256 KiB of locked memory (2 worker(s) × 128 KiB; \
             Linux 5.10 charges them to RLIMIT_MEMLOCK before 5.12) but the limit is 64 KiB \
             (raise it: ulimit -l, LimitMEMLOCK=, --ulimit memlock=); falling back to epoll"
        );
        f.configured = IoDriver::IoUring;
        let Plan::Refuse(e) = decide(&f).plan else {
            panic!()
        };
        assert!(e.to_string().contains("limit is 64 KiB"), "{e}");

        // Enough for both rings, CAP_IPC_LOCK, or 5.12 and later: io_uring.
        f.memlock = Some(256 * 1024);
        assert_eq!(decide(&f).plan, Plan::IoUring { splice: true });
        f.memlock = Some(64 * 1024);
        f.ipc_lock = true;
        assert_eq!(decide(&f).plan, Plan::IoUring { splice: true });
        f.ipc_lock = false;
        f.kernel = Some((5, 12));
        assert_eq!(decide(&f).plan, Plan::IoUring { splice: true });
        // Unlimited.
        f.kernel = Some((5, 10));
        f.memlock = None;
        assert_eq!(decide(&f).plan, Plan::IoUring { splice: true });
    }

    #[test]
    fn one_ring_of_1024_entries_is_charged_128_kib() {
        assert_eq!(ring_memlock_bytes(1024), 128 * 1024);
        assert_eq!(ring_memlock_bytes(2), 8 * 1024);
    }

    #[test]
    fn refused_rings_and_configured_epoll() {
        let mut f = facts(IoDriver::Auto, (6, 1), None);
        f.probe = Err("Operation not permitted (os error 1)".into());
        let d = decide(&f);
        assert_eq!(d.plan, Plan::Epoll);
        assert_eq!(
            d.line,
            "io_uring refused (Operation not permitted (os error 1)); falling back to epoll"
        );
        // Configured io_uring: the workers' ring setup fails the start, as before.
        f.configured = IoDriver::IoUring;
        assert_eq!(decide(&f).plan, Plan::IoUring { splice: true });
        f.configured = IoDriver::Epoll;
        assert_eq!(decide(&f).plan, Plan::Epoll);
    }

    #[test]
    fn reads_version_limits_and_capabilities() {
        assert_eq!(parse_version("6.1.0-50-cloud-amd64\n"), Some((6, 1)));
        assert_eq!(parse_version("5.4.0-100-generic"), Some((5, 4)));
        assert_eq!(parse_version("6.12.118+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_version("garbage"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max locked memory         65536                65536                bytes     \n";
        assert_eq!(parse_memlock(limits), Some(65536));
        let unlimited =
            "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(parse_memlock(unlimited), None);
        assert!(parse_ipc_lock("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(!parse_ipc_lock("CapEff:\t0000000000000000\n"));
    }

    #[test]
    fn this_kernel_is_probed() {
        // Whatever the host, gathering must not panic and must name the workers.
        let f = gather(IoDriver::Auto, 3);
        assert_eq!(f.workers, 3);
        assert!(f.kernel.is_some());
    }
}
