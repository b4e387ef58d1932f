//! Per-core connection balance: a classic BPF program on the workers' `SO_REUSEPORT`
//! group that sends a new connection to the listener of a worker pinned to the CPU that
//! received it (the CPU running the SYN's softirq: the NIC queue's CPU, or the client's
//! CPU on loopback). The kernel's hash alone puts a few long keep-alive clients on one
//! core while another idles; by CPU, each core serves the traffic it already handles.
//!
//! Listeners join the group in worker order (lib.rs binds them all on the main thread
//! before any worker starts), so a socket's index in the group is its worker id. A
//! program returning an index past the group's sockets makes the kernel use its hash:
//! connections arriving on a CPU with no worker are spread as before.

use libc::sock_filter;

/// "Use your hash": any index at or past the number of sockets in the group.
const USE_HASH: u32 = u32::MAX;

/// The longest jump a classic BPF conditional can take (`jt`/`jf` are `u8`).
const MAX_JUMP: usize = u8::MAX as usize;

/// The program for workers pinned as `cpu_of_worker[worker] = cpu`. Several workers on
/// one CPU (`OPR_PROXY_WORKER_PER_CORE`, or more workers than CPUs) share that CPU's
/// connections at random. `None` when the program would not fit classic BPF's limits.
pub(crate) fn program(cpu_of_worker: &[usize]) -> Option<Vec<sock_filter>> {
    // CPUs in order of their first worker, each with its workers in id order.
    let mut by_cpu: Vec<(usize, Vec<usize>)> = Vec::new();
    for (worker, &cpu) in cpu_of_worker.iter().enumerate() {
        match by_cpu.iter_mut().find(|(c, _)| *c == cpu) {
            Some((_, workers)) => workers.push(worker),
            None => by_cpu.push((cpu, vec![worker])),
        }
    }
    let mut prog = vec![load_ancillary(libc::SKF_AD_CPU)];
    for (cpu, workers) in &by_cpu {
        let block = pick_among(workers);
        if block.len() > MAX_JUMP {
            return None;
        }
        // Not this CPU: skip its block.
        prog.push(jump_if_equal(
            u32::try_from(*cpu).ok()?,
            0,
            block.len() as u8,
        ));
        prog.extend(block);
    }
    prog.push(return_k(USE_HASH));
    (prog.len() <= libc::BPF_MAXINSNS as usize).then_some(prog)
}

/// Return one of `workers`: the only one, or one at random.
fn pick_among(workers: &[usize]) -> Vec<sock_filter> {
    let index = |w: usize| u32::try_from(w).unwrap_or(USE_HASH);
    match workers {
        [only] => vec![return_k(index(*only))],
        [rest @ .., last] => {
            let mut block = vec![
                load_ancillary(libc::SKF_AD_RANDOM),
                statement(
                    libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
                    workers.len() as u32,
                ),
            ];
            for (slot, &worker) in rest.iter().enumerate() {
                block.push(jump_if_equal(slot as u32, 0, 1));
                block.push(return_k(index(worker)));
            }
            block.push(return_k(index(*last)));
            block
        }
        [] => vec![return_k(USE_HASH)],
    }
}

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// `A = <ancillary value>` (the CPU number, a random number).
fn load_ancillary(which: libc::c_int) -> sock_filter {
    statement(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        (libc::SKF_AD_OFF + which) as u32,
    )
}

fn return_k(k: u32) -> sock_filter {
    statement(libc::BPF_RET | libc::BPF_K, k)
}

/// `if A == k` go forward `jt` instructions, else `jf`.
fn jump_if_equal(k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of classic BPF `program` emits, as the kernel would.
    fn run(prog: &[sock_filter], cpu: u32, random: u32) -> u32 {
        let mut a = 0u32;
        let mut pc = 0;
        loop {
            let insn = prog[pc];
            let code = u32::from(insn.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                a = match insn.k.wrapping_sub(libc::SKF_AD_OFF as u32) as libc::c_int {
                    libc::SKF_AD_CPU => cpu,
                    libc::SKF_AD_RANDOM => random,
                    other => panic!("unexpected load {other}"),
                };
            } else if code == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K {
                assert_ne!(insn.k, 0, "the kernel refuses mod 0");
                a %= insn.k;
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += usize::from(if a == insn.k { insn.jt } else { insn.jf });
            } else if code == libc::BPF_RET | libc::BPF_K {
                return insn.k;
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
    }

    #[test]
    fn one_worker_per_cpu_gets_its_cpus_connections() {
        let prog = program(&[0, 1, 2, 3]).unwrap();
        for cpu in 0..4 {
            assert_eq!(run(&prog, cpu, 12345), cpu);
        }
        // A CPU with no worker: the kernel's hash.
        assert_eq!(run(&prog, 7, 0), USE_HASH);
    }

    #[test]
    fn a_mask_that_does_not_start_at_zero() {
        // taskset -c 4,6: worker 0 on CPU 4, worker 1 on CPU 6.
        let prog = program(&[4, 6]).unwrap();
        assert_eq!(run(&prog, 4, 0), 0);
        assert_eq!(run(&prog, 6, 0), 1);
        assert_eq!(run(&prog, 0, 0), USE_HASH);
        assert_eq!(run(&prog, 5, 0), USE_HASH);
    }

    #[test]
    fn workers_sharing_a_cpu_share_its_connections() {
        // OPR_PROXY_WORKER_PER_CORE=3 on CPUs 0 and 1: workers 0, 2, 4 on CPU 0.
        let prog = program(&[0, 1, 0, 1, 0, 1]).unwrap();
        let on_cpu0: Vec<u32> = (0..6).map(|r| run(&prog, 0, r)).collect();
        assert_eq!(on_cpu0, [0, 2, 4, 0, 2, 4]);
        let on_cpu1: Vec<u32> = (0..6).map(|r| run(&prog, 1, r)).collect();
        assert_eq!(on_cpu1, [1, 3, 5, 1, 3, 5]);
        assert_eq!(run(&prog, 2, 0), USE_HASH);
    }

    #[test]
    fn fits_classic_bpf_or_is_not_made() {
        // 1024 CPUs, one worker each: two instructions a CPU.
        let cpus: Vec<usize> = (0..1024).collect();
        let prog = program(&cpus).unwrap();
        assert!(prog.len() <= libc::BPF_MAXINSNS as usize);
        assert_eq!(run(&prog, 1023, 0), 1023);
        // 200 workers on one CPU: the block would need a jump past 255.
        assert!(program(&[0; 200]).is_none());
        // 2100 CPUs: past the 4096-instruction limit.
        let cpus: Vec<usize> = (0..2100).collect();
        assert!(program(&cpus).is_none());
    }
}
