//! Processes around a load test: CPU time from /proc/<pid>/stat, CPU lists and pinning
//! (taskset), and the proxy under test (spawned pinned, ready on its log line, killed on drop).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// CPU time (user + system, all threads) of a set of processes, e.g. nginx master + worker.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    pids: Vec<u32>,
    hz: u64,
}

impl CpuMeter {
    pub fn new(pids: Vec<u32>) -> CpuMeter {
        CpuMeter {
            pids,
            hz: clock_ticks_per_sec(),
        }
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Total CPU time so far; None if a process is gone or unreadable.
    pub fn sample(&self) -> Option<Duration> {
        let mut ticks = 0;
        for pid in &self.pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            ticks += parse_stat_ticks(&stat)?;
        }
        Some(Duration::from_secs_f64(ticks as f64 / self.hz as f64))
    }
}

/// Per CPU in the text of `/proc/stat`: (id, busy ticks, total ticks). Busy counts user,
/// nice, system, irq, softirq and steal (time the CPU was not ours to use either).
pub fn parse_proc_stat(text: &str) -> Vec<(usize, u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let id: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.take(8).map(|x| x.parse().unwrap_or(0)).collect();
            if v.len() < 8 {
                return None;
            }
            let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
            Some((id, busy, busy + v[3] + v[4]))
        })
        .collect()
}

/// Busy time of a set of CPUs, whoever used them (steal included): shows when other
/// processes or a busy virtualisation host compete with the pinned proxy or generator.
#[derive(Clone, Debug)]
pub struct BusyMeter {
    cpus: Vec<usize>,
    hz: u64,
}

impl BusyMeter {
    pub fn new(cpus: Vec<usize>) -> BusyMeter {
        BusyMeter {
            cpus,
            hz: clock_ticks_per_sec(),
        }
    }

    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Busy time summed over the CPUs so far.
    pub fn sample(&self) -> Option<Duration> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: u64 = parse_proc_stat(&text)
            .iter()
            .filter(|(id, _, _)| self.cpus.contains(id))
            .map(|(_, busy, _)| busy)
            .sum();
        Some(Duration::from_secs_f64(ticks as f64 / self.hz as f64))
    }

    /// Busy fraction of each CPU over `over` (a blocking measurement).
    pub fn busy_now(cpus: &[usize], over: Duration) -> Vec<(usize, f64)> {
        let read = || {
            std::fs::read_to_string("/proc/stat")
                .map(|t| parse_proc_stat(&t))
                .unwrap_or_default()
        };
        let before = read();
        std::thread::sleep(over);
        let after = read();
        after
            .iter()
            .filter(|(id, _, _)| cpus.contains(id))
            .filter_map(|&(id, busy, total)| {
                let &(_, b0, t0) = before.iter().find(|(i, _, _)| *i == id)?;
                let dt = total.saturating_sub(t0).max(1);
                Some((id, busy.saturating_sub(b0) as f64 / dt as f64))
            })
            .collect()
    }
}

/// A `kB` field of the text of `/proc/<pid>/status`, e.g. `VmRSS`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident memory (VmRSS) summed over `pids`, KiB; None if one is gone or unreadable.
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().try_fold(0, |sum, pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(sum + parse_status_kib(&status, "VmRSS")?)
    })
}

/// The soft limit on open files from the text of `/proc/<pid>/limits` (None = unlimited
/// or unreadable).
pub fn parse_nofile_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This process's soft limit on open files.
pub fn nofile_limit() -> Option<u64> {
    parse_nofile_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// Parses a CPU list such as `0-3,6,8-9`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// The inverse of [`parse_cpu_list`] (ranges collapsed).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// CPUs this process may run on (`Cpus_allowed_list` in /proc/self/status).
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(parse_cpu_list)
        })
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        })
}

/// True when `cmd` runs (`cmd --version` or `cmd -v` exits, whatever its status).
pub fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Restricts this process (every thread it has and will create) to `cpus`, with taskset:
/// safe code has no sched_setaffinity for a CPU list.
pub fn pin_self(cpus: &[usize]) -> io::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &format_cpu_list(cpus)])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("taskset exited with {status}")))
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// How to start the proxy under test.
#[derive(Clone, Debug)]
pub struct ProxySpec {
    pub bin: PathBuf,
    /// Pin with `taskset -c` (the proxy pins its workers inside this mask).
    pub cpus: Option<Vec<usize>>,
    pub cores: usize,
    /// `host:port` of each executor.
    pub executors: Vec<String>,
    pub secret: String,
    /// Extra `KEY=VALUE` environment, applied last.
    pub env: Vec<(String, String)>,
    /// stdout and stderr go here.
    pub log: PathBuf,
}

/// A running proxy; killed when dropped.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// The readiness line, e.g. `... listening on 127.0.0.1:1234 with 1 worker(s)`.
    pub banner: String,
}

impl ProxyProcess {
    /// Starts the proxy and waits (up to 30 s) for its `listening on` log line.
    pub fn spawn(spec: &ProxySpec) -> io::Result<ProxyProcess> {
        if !spec.bin.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "proxy binary {} not found (cargo build --release -p opr-proxy --bin opr-proxy)",
                    spec.bin.display()
                ),
            ));
        }
        let port = free_port()?;
        let mut cmd = match &spec.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(format_cpu_list(cpus)).arg(&spec.bin);
                c
            }
            None => Command::new(&spec.bin),
        };
        cmd.env("PORT", port.to_string())
            .env("OPR_PROXY_HOST", "127.0.0.1")
            .env("OPR_PROXY_EXECUTORS", spec.executors.join(","))
            .env("OPR_PROXY_SECRET", &spec.secret)
            .env("OPR_PROXY_ALGORITHM", "round-robin")
            .env("OPR_PROXY_CORES", spec.cores.to_string())
            .env("OPR_PROXY_MAX_BODY_SIZE", "0")
            .env("OPR_PROXY_HEALTHCHECK_INTERVAL", "5000");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let log = File::create(&spec.log)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err(io::Error::other("no stderr pipe"));
        };
        let (tx, rx) = mpsc::channel();
        // Copies the proxy's stderr into the log for its whole life; reports the banner.
        std::thread::spawn(move || copy_log(stderr, log, tx));
        let mut proxy = ProxyProcess {
            child,
            pid,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log: spec.log.clone(),
            banner: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Err(io::Error::other(format!(
                    "proxy exited with {status} before listening; log {}:\n{}",
                    spec.log.display(),
                    tail(&spec.log, 20)
                )));
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    proxy.banner = line;
                    return Ok(proxy);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                // Its stderr closed without the line: it is exiting (e.g. a bad setting).
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proxy.child.wait()?;
                    return Err(io::Error::other(format!(
                        "proxy exited with {status} before listening; log {}:\n{}",
                        spec.log.display(),
                        tail(&spec.log, 20)
                    )));
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "proxy did not log `listening on` within 30 s; log {}:\n{}",
                            spec.log.display(),
                            tail(&spec.log, 20)
                        ),
                    ))
                }
            }
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_log(stderr: impl io::Read, mut log: File, ready: mpsc::Sender<String>) {
    let mut announced = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if !announced && line.contains("listening on") {
            announced = true;
            let _ = ready.send(line);
        }
    }
}

/// The last `n` lines of a text file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        let stat = "4242 (opr proxy) (x)) S 1 4242 4242 0 -1 4194560 1617 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("1 (a) S 1 2"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
        // Our own process is readable and has run.
        let own = std::fs::read_to_string("/proc/self/stat").expect("procfs");
        assert!(parse_stat_ticks(&own).is_some());
        assert!(CpuMeter::new(vec![std::process::id()]).sample().is_some());
        assert!(CpuMeter::new(vec![u32::MAX]).sample().is_none());
    }

    #[test]
    fn proc_stat_per_cpu() {
        let text = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                    cpu0 1 2 3 40 5 6 7 8 0 0\n\
                    cpu1 0 0 0 10 0 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_proc_stat(text), vec![(0, 27, 72), (1, 0, 10)]);
        let all = allowed_cpus();
        let busy = BusyMeter::new(all.clone());
        assert!(busy.sample().is_some());
        let now = BusyMeter::busy_now(&all, Duration::from_millis(30));
        assert!(now.iter().all(|(_, f)| (0.0..=1.0).contains(f)), "{now:?}");
    }

    #[test]
    fn status_and_limits() {
        let status = "Name:\tnginx\nVmHWM:\t   20480 kB\nVmRSS:\t   16384 kB\nThreads:\t1\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(16_384));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20_480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        let me = rss_kib(&[std::process::id()]).expect("own RSS");
        assert!(me > 0);
        assert_eq!(rss_kib(&[]), Some(0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(parse_nofile_limit(limits), Some(20_000));
        assert_eq!(
            parse_nofile_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert!(nofile_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,6, 8-9\n"),
            Some(vec![0, 1, 2, 3, 6, 8, 9])
        );
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_cpu_list(&[1]), "1");
        assert!(!allowed_cpus().is_empty());
    }
}
