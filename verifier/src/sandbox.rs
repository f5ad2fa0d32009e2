//! The sandbox boundary: a backend runs one harness job on untrusted code and returns what came
//! out (stdout, stderr, result lines, how it ended). It decides nothing; see `judge`.

use std::time::Duration;

use serde_json::Value;

/// One run of the harness.
#[derive(Debug, Clone)]
pub struct Job {
    /// The harness job (`{"mode": ..., "code": ..., ...}`). Never holds expected values.
    pub spec: Value,
    /// Bytes on the program's stdin.
    pub stdin: Vec<u8>,
    pub limits: RunLimits,
}

#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// Wall-clock limit of the whole run.
    pub wall: Duration,
    /// Longest wait for the next result line (the per-test limit of a multi-test run).
    pub idle: Option<Duration>,
    pub memory_bytes: u64,
    /// Cap on stdout and on stderr, each.
    pub output_bytes: usize,
    /// Cap on the result channel.
    pub result_bytes: usize,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The program ended by itself (its exit status is not a verdict).
    Exited,
    /// Killed at the wall or idle deadline (or by the CPU-time limit).
    TimedOut,
    /// Killed for writing more than the output cap.
    OutputLimit,
    /// Ended by a signal or trap it did not ask for (a crash, the kernel's OOM killer); the
    /// text names it (`SIGSEGV`, `wasm trap: ...`).
    Crashed(String),
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Result lines, parsed. A line that is not a JSON object sets `malformed`.
    pub results: Vec<Value>,
    pub malformed: bool,
    pub end: End,
    pub seconds: f64,
}

impl Outcome {
    pub(crate) fn new(stdout: Vec<u8>, stderr: Vec<u8>, raw_results: &[u8], end: End, seconds: f64) -> Self {
        let mut malformed = false;
        let mut results = Vec::new();
        for line in raw_results.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Value>(line) {
                Ok(v @ Value::Object(_)) => results.push(v),
                _ => malformed = true,
            }
        }
        Outcome { stdout, stderr, results, malformed, end, seconds }
    }
}

/// Failures of the sandbox itself (never of the candidate).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the sandbox interpreter {python}: {source}")]
    Spawn { python: String, source: std::io::Error },
    #[error("sandbox I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("sandbox protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wasm(#[from] crate::wasm::WasmError),
}

/// A place to run untrusted code.
pub trait Sandbox: Send + Sync {
    /// `native` or `wasm`.
    fn name(&self) -> &'static str;
    /// Multiplies the per-test time limits (wasm runs pure Python ~4-5x slower).
    fn time_scale(&self) -> f64 {
        1.0
    }
    fn run(&self, job: &Job) -> Result<Outcome, SandboxError>;
}
