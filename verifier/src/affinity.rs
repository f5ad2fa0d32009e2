//! CPU placement of the verifier's workers. A judged completion is a chain of hand-offs
//! between processes (the worker thread, the trusted judge, the sandboxed child): on a VM each
//! hand-off to another core is an inter-processor interrupt, a VM exit. Measured on this
//! project's 2-core VM, one assert completion with 40 candidate calls took 20.7 ms with its
//! processes free to move and 14.9 ms with them on one core (`bench/results/verifier-cpu-2core.md`).
//! So when there are no more workers than usable cores, worker `i` is pinned to a core of its
//! own, and the processes that serve it are placed on the same core for each run.

use std::cell::Cell;

thread_local! {
    static PINNED: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The cores this process may run on.
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn set_affinity(pid: libc::pid_t, cpu: usize) -> bool {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Pins the calling thread to `cpu` and remembers it for [`pinned`].
pub fn pin_this_thread(cpu: usize) {
    if set_affinity(0, cpu) {
        PINNED.with(|p| p.set(Some(cpu)));
    }
}

/// The core the calling thread is pinned to, if it is a pinned worker.
pub fn pinned() -> Option<usize> {
    PINNED.with(Cell::get)
}

/// Places process `pid` (a child of ours) on the calling worker's core, if it has one.
pub fn follow(pid: u32) {
    if let (Some(cpu), Ok(pid)) = (pinned(), libc::pid_t::try_from(pid)) {
        set_affinity(pid, cpu);
    }
}
