//! The native sandbox: CPython in a child process, forked per run from a warm fork-server.
//!
//! What a run gets: a fresh private directory as its cwd, a cleared environment, isolated mode
//! (`-I`), rlimits (address space, CPU seconds, file size, open files, processes), its own
//! session (killed as a group), a parent-death signal, no new privileges, output caps drained
//! concurrently. When the verifier runs as root each worker slot runs its children as its own
//! unprivileged uid (from [`SANDBOX_UIDS`], a block per sandbox): they cannot touch the verifier
//! or each other, and every process of that uid is killed after each run, so nothing escapes by
//! leaving the process group. Where the kernel allows it, servers live in new network (no interface but `lo`),
//! mount (private tmpfs on /tmp), IPC and UTS namespaces; where it does not, the sandbox logs
//! a warning once and runs without them.
//!
//! Not covered: seccomp filtering of system calls, cgroup memory and CPU accounting. Without
//! root, children run as the verifier's own uid and escaped grandchildren are only killed by
//! process group.

mod fork_server;
mod pipes;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fork_server::ForkServer;
use serde::Deserialize;

use crate::harness::SERVER_SOURCE;
use crate::sandbox::{Conversation, End, Job, Outcome, Progress, Sandbox, SandboxError};

/// Settings of the native sandbox.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// The interpreter children run. One installed outside `/usr` (conda, pyenv, a venv) gets
    /// its installation folders mounted read-only into the minimal root; they must be readable
    /// by the sandbox uids (world-readable files under a private home folder are enough).
    pub python: PathBuf,
    /// Try network/mount namespaces.
    pub isolate: bool,
    /// Open files per child.
    pub max_open_files: u64,
    /// Processes (and threads) per child uid, when running as root.
    pub max_processes: u64,
    /// Largest file a child may write.
    pub max_file_bytes: u64,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            python: default_python(),
            isolate: true,
            max_open_files: 64,
            max_processes: 16,
            max_file_bytes: 16 << 20,
        }
    }
}

/// `$DLLM_SANDBOX_PYTHON`, else `/usr/bin/python3`, else `python3` from `PATH`.
pub fn default_python() -> PathBuf {
    if let Some(p) = std::env::var_os("DLLM_SANDBOX_PYTHON") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        return debian.to_path_buf();
    }
    PathBuf::from("python3")
}

/// The native backend: a pool of worker slots, one per concurrent run.
pub struct NativeSandbox {
    config: NativeConfig,
    idle: Mutex<Vec<Slot>>,
    next_slot: Mutex<usize>,
    /// The uids of this sandbox's slots, when running as root.
    uids: Option<UidBlock>,
    warned: AtomicBool,
}

#[derive(Deserialize)]
struct Started {
    pid: i32,
}

/// How the run's main process ended; only a signal matters (the exit status is no verdict).
#[derive(Deserialize)]
struct Ended {
    signal: Option<i32>,
}

/// How long the server may take, once a run's main process is killed, to reap it, kill what
/// is left of the run and remove its folder. A server silent for longer is broken.
const CLEAN_UP: Duration = Duration::from_secs(10);

/// The uids sandboxed children run as (when the verifier runs as root). Each sandbox claims a
/// block of [`UIDS_PER_SANDBOX`] with a lock file held while it lives, and slot `i` runs as
/// `block + i`: since every process of a slot's uid is killed after each of its runs, two
/// sandboxes sharing uids (a training run and an `eval` beside it) would kill each other's runs.
pub const SANDBOX_UIDS: std::ops::Range<u32> = 61000..64840;
/// Concurrent runs one sandbox can have (its uid block).
pub const UIDS_PER_SANDBOX: u32 = 256;

/// A claimed block of sandbox uids; the lock is released when the sandbox (or its process) ends.
struct UidBlock {
    base: u32,
    _lock: std::fs::File,
}

impl UidBlock {
    fn claim() -> Result<Self, SandboxError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join("dllm-rl-sandbox-uids");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        for (i, base) in SANDBOX_UIDS.step_by(UIDS_PER_SANDBOX as usize).enumerate() {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(format!("block-{i}.lock")))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(UidBlock { base, _lock: file });
            }
        }
        Err(SandboxError::Protocol(format!(
            "every block of sandbox uids ({}..{}) is held by another native sandbox (locks in {})",
            SANDBOX_UIDS.start,
            SANDBOX_UIDS.end,
            dir.display()
        )))
    }
}

/// One concurrent run's place: its uid (as root) and its fork-servers, started on first use.
/// A slot runs one job at a time, whichever server it uses, so killing every process of its
/// uid after a run never touches another run.
struct Slot {
    index: usize,
    /// The verifier worker that uses it, once one has.
    worker: Option<usize>,
    lean: Option<ForkServer>,
    /// The server with pytest imported, for candidates that import it: importing it makes every
    /// fork and every child dearer (see `fork_server.py`).
    pytest: Option<ForkServer>,
}

impl Slot {
    fn servers(&self) -> impl Iterator<Item = &ForkServer> {
        self.lean.iter().chain(self.pytest.iter())
    }
}

/// Whether a job's candidate imports pytest (rare now that tests run on the trusted side).
fn wants_pytest(job: &Job) -> bool {
    job.spec.get("code").and_then(|t| t.as_str()).is_some_and(|t| t.contains("pytest"))
}

impl NativeSandbox {
    pub fn new(config: NativeConfig) -> Result<Self, SandboxError> {
        let sandbox = NativeSandbox {
            config,
            idle: Mutex::new(Vec::new()),
            next_slot: Mutex::new(0),
            // SAFETY: geteuid has no preconditions.
            uids: if unsafe { libc::geteuid() } == 0 { Some(UidBlock::claim()?) } else { None },
            warned: AtomicBool::new(false),
        };
        // Start one server now, so that a broken interpreter is reported at start-up.
        let mut slot = sandbox.take_slot();
        let started = sandbox.server(&mut slot, false).map(|_| ());
        sandbox.put_back(slot);
        started?;
        Ok(sandbox)
    }

    /// Whether runs have no network (the servers are in a fresh network namespace).
    pub fn network_isolated(&self) -> bool {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let all = idle.iter().flat_map(Slot::servers).all(|s| s.isolated_network);
        all
    }

    /// Whether every run starts with empty scratch space of its own (`/tmp`, `/var/tmp`,
    /// `/dev/shm`: fresh tmpfs mounts, gone with the run).
    pub fn fresh_scratch(&self) -> bool {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let all = idle.iter().flat_map(Slot::servers).all(|s| s.fresh_scratch);
        all
    }

    /// Whether runs see only a minimal root (`/usr`, `/etc` read-only, `/dev`, empty `/tmp`).
    pub fn filesystem_hidden(&self) -> bool {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let all = idle.iter().flat_map(Slot::servers).all(|s| s.hidden_filesystem);
        all
    }

    /// A free slot; a verifier worker gets the one it used last (its fork-server then stays on
    /// the worker's core, see `affinity`).
    fn take_slot(&self) -> Slot {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let worker = rayon::current_thread_index();
        let own = worker.and_then(|w| idle.iter().position(|s| s.worker == Some(w)));
        let free = own.or_else(|| idle.iter().position(|s| s.worker.is_none() || worker.is_none()));
        if let Some(at) = free {
            let mut slot = idle.swap_remove(at);
            slot.worker = slot.worker.or(worker);
            return slot;
        }
        drop(idle);
        let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        Slot { index: *next - 1, worker, lean: None, pytest: None }
    }

    /// The slot's server of the wanted kind, started if it has none yet.
    fn server<'s>(&self, slot: &'s mut Slot, pytest: bool) -> Result<&'s ForkServer, SandboxError> {
        let place = if pytest { &mut slot.pytest } else { &mut slot.lean };
        if place.is_none() {
            let server = ForkServer::spawn(&self.config.python, SERVER_SOURCE, pytest, self.config.isolate)?;
            if self.config.isolate
                && !(server.isolated_network && server.hidden_filesystem)
                && !self.warned.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    network_isolated = server.isolated_network,
                    filesystem_hidden = server.hidden_filesystem,
                    "native sandbox: namespaces unavailable (needs root or unprivileged user namespaces); \
                     candidate code may reach the network or read host files"
                );
            }
            *place = Some(server);
        }
        Ok(place.as_ref().expect("just started"))
    }

    fn put_back(&self, slot: Slot) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
    }

    fn run_on(
        &self,
        slot: usize,
        server: &ForkServer,
        job: &Job,
        conversation: Option<&mut dyn Conversation>,
    ) -> Result<Outcome, SandboxError> {
        let limits = job.limits;
        let mut header = serde_json::json!({
            "as_bytes": limits.memory_bytes,
            "cpu_secs": limits.wall.as_secs() + 1,
            "fsize_bytes": self.config.max_file_bytes,
            "nofile": self.config.max_open_files,
            "nproc": self.config.max_processes,
        });
        // The child runs on the worker's core, next to the trusted judge it answers.
        if let Some(cpu) = crate::affinity::pinned() {
            header["cpu"] = cpu.into();
        }
        if let Some(block) = &self.uids {
            if slot as u32 >= UIDS_PER_SANDBOX {
                return Err(SandboxError::Protocol(format!("more than {UIDS_PER_SANDBOX} concurrent native runs")));
            }
            let uid = block.base + slot as u32;
            header["uid"] = uid.into();
            header["gid"] = uid.into();
        }
        let job_bytes = serde_json::to_vec(&job.spec).map_err(|e| SandboxError::Protocol(e.to_string()))?;
        let pipes = pipes::RunPipes::new()?;
        let start = Instant::now();
        server.send(&serde_json::to_vec(&header).expect("header serializes"), &pipes.child_fds())?;
        let pipes = pipes.close_child_ends();
        let started: Started = parse(&server.receive()?)?;
        let drained = pipes.drain(&job_bytes, &job.stdin, &limits, Progress::new(job), start, conversation)?;
        let mut end = drained.end;
        // Closed pipes (`Exited`) may hide a live program (one that closed its descriptors and
        // sleeps): it gets what is left of its deadline to end, then it is killed like any
        // other run out of time. The server answers only once it has reaped it.
        let mut ended = None;
        if end == End::Exited {
            ended = server.receive_until(drained.deadline)?;
            if ended.is_none() {
                end = End::TimedOut;
            }
        }
        let ended = match ended {
            Some(message) => message,
            None => {
                // SAFETY: kill has no memory preconditions. The child leads its own session
                // and group; the server kills whatever of the run left the group.
                unsafe { libc::kill(-started.pid, libc::SIGKILL) };
                server.receive_until(Instant::now() + CLEAN_UP)?.ok_or_else(|| {
                    SandboxError::Protocol(format!("the fork-server did not report the run's end {CLEAN_UP:?} after the kill"))
                })?
            }
        };
        let ended: Ended = parse(&ended)?;
        let seconds = start.elapsed().as_secs_f64();
        let end = match (end, ended.signal) {
            (End::Exited, Some(libc::SIGXCPU)) => End::TimedOut,
            (End::Exited, Some(libc::SIGXFSZ)) => End::OutputLimit,
            (End::Exited, Some(sig)) => End::Crashed(signal_name(sig)),
            (end, _) => end,
        };
        Ok(Outcome::new(drained.stdout, drained.stderr, &drained.results, end, seconds))
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => format!("signal {other}"),
    }
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, SandboxError> {
    serde_json::from_slice(bytes)
        .map_err(|e| SandboxError::Protocol(format!("fork-server said {:?}: {e}", String::from_utf8_lossy(bytes))))
}

impl Sandbox for NativeSandbox {
    fn name(&self) -> &'static str {
        "native"
    }

    fn run(&self, job: &Job) -> Result<Outcome, SandboxError> {
        self.run_in_slot(job, None)
    }

    fn converse(
        &self,
        job: &Job,
        mut conversation: Box<dyn Conversation>,
    ) -> (Result<Outcome, SandboxError>, Box<dyn Conversation>) {
        let result = self.run_in_slot(job, Some(conversation.as_mut()));
        (result, conversation)
    }
}

impl NativeSandbox {
    fn run_in_slot(&self, job: &Job, conversation: Option<&mut dyn Conversation>) -> Result<Outcome, SandboxError> {
        let mut slot = self.take_slot();
        let pytest = wants_pytest(job);
        let index = slot.index;
        let result = self.server(&mut slot, pytest).and_then(|server| self.run_on(index, server, job, conversation));
        // A server that failed mid-protocol is dropped (and killed); a new one replaces it.
        if result.is_err() {
            *(if pytest { &mut slot.pytest } else { &mut slot.lean }) = None;
        }
        self.put_back(slot);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sandboxes alive at once (here in one process; across processes the lock files work
    /// the same) never share a uid, so one's clean-up cannot kill the other's runs.
    #[test]
    fn sandboxes_alive_together_get_separate_uids() {
        let a = NativeSandbox::new(NativeConfig::default()).unwrap();
        let b = NativeSandbox::new(NativeConfig::default()).unwrap();
        match (&a.uids, &b.uids) {
            (Some(x), Some(y)) => assert!(x.base.abs_diff(y.base) >= UIDS_PER_SANDBOX, "{} and {}", x.base, y.base),
            (None, None) => {} // not root: children run as our own uid, no slot uids to share
            _ => panic!("root or not, both sandboxes see the same"),
        }
        drop(a);
        // A released block can be claimed again, never the one still held.
        let c = NativeSandbox::new(NativeConfig::default()).unwrap();
        if let (Some(x), Some(y)) = (&b.uids, &c.uids) {
            assert_ne!(x.base, y.base);
        }
    }
}
