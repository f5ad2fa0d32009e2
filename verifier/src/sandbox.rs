//! The sandbox boundary: a backend runs one harness job on untrusted code and returns what came
//! out (stdout, stderr, result lines, how it ended). It decides nothing; see `judge`.

use std::time::Duration;

use serde::Deserialize;
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
    /// Longest wait for the next test's result line (the per-test limit of a multi-test run;
    /// see [`Progress`] for what counts).
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

/// What restarts a run's idle timer ([`RunLimits::idle`]) in a batch run: the harness's record
/// of the test the run is working on, once its line is complete, the line of the next test
/// (`{"test": i, ...}`, counting from the job's `start_at`) in a call run. Whatever else the
/// candidate writes to the result channel (newlines from a thread of its own, stray objects)
/// keeps no test running past its limit. A forged line of the next test buys that test's limit
/// once, and costs the test: its real line then makes two, which the judge rejects. (In a serve
/// run, each request restarts it.)
pub(crate) struct Progress {
    /// The call test whose line is awaited; `None` in other runs.
    next_test: Option<u64>,
    /// The channel's last line so far, not yet ended by a newline.
    partial: Vec<u8>,
    serve: bool,
}

/// The field of a result line that says which test it records.
#[derive(Deserialize)]
struct Record {
    test: Option<u64>,
}

impl Progress {
    pub(crate) fn new(job: &Job) -> Self {
        let call = job.spec.get("mode").and_then(Value::as_str) == Some("call");
        if job.spec.get("mode").and_then(Value::as_str) == Some("serve") {
            // A serve run's progress is each request it gets (the sandboxes restart the timer).
            return Progress { next_test: None, partial: Vec::new(), serve: true };
        }
        let start_at = job.spec.get("start_at").and_then(Value::as_u64).unwrap_or(0);
        Progress { next_test: call.then_some(start_at), partial: Vec::new(), serve: false }
    }

    /// Takes the next bytes of the result channel and says whether they completed an awaited line.
    pub(crate) fn advanced(&mut self, mut bytes: &[u8]) -> bool {
        if self.serve {
            return false;
        }
        let mut advanced = false;
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            let line = if self.partial.is_empty() {
                &bytes[..end]
            } else {
                self.partial.extend_from_slice(&bytes[..end]);
                &self.partial[..]
            };
            advanced |= awaited(&mut self.next_test, line);
            self.partial.clear();
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
        advanced
    }
}

fn awaited(next_test: &mut Option<u64>, line: &[u8]) -> bool {
    let Ok(record) = serde_json::from_slice::<Record>(line) else { return false };
    match next_test {
        Some(next) if record.test == Some(*next) => {
            *next += 1;
            true
        }
        _ => false,
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

/// The trusted side of an interactive run (a `serve` job): it answers each of the sandbox's
/// messages with the next request, until it has asked everything. The time it takes to answer
/// is its own, never the run's: deadlines count only while the sandbox works.
pub trait Conversation: std::any::Any + Send {
    /// Takes the sandbox's latest message (one JSON line, without its newline) and returns the
    /// next request (one JSON line), or `None` to end the run.
    fn answer(&mut self, message: &[u8]) -> Option<Vec<u8>>;
}

/// A place to run untrusted code.
pub trait Sandbox: Send + Sync {
    /// `native` or `wasm`.
    fn name(&self) -> &'static str;
    /// Multiplies the per-test time limits (wasm runs pure Python ~4-5x slower).
    fn time_scale(&self) -> f64 {
        1.0
    }
    /// Runs a batch job (`stdio`, `call`): the job in, the results out.
    fn run(&self, job: &Job) -> Result<Outcome, SandboxError>;
    /// Runs an interactive job (`serve`), each message of the sandbox answered by
    /// `conversation`; [`RunLimits::idle`] is the limit on each answer's work. The conversation
    /// comes back with the outcome, whatever happened.
    fn converse(
        &self,
        job: &Job,
        conversation: Box<dyn Conversation>,
    ) -> (Result<Outcome, SandboxError>, Box<dyn Conversation>);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Job {
        let limits = RunLimits { wall: Duration::ZERO, idle: None, memory_bytes: 0, output_bytes: 0, result_bytes: 0 };
        Job { spec, stdin: Vec::new(), limits }
    }

    #[test]
    fn only_the_next_tests_line_is_progress() {
        let mut p = Progress::new(&job(serde_json::json!({"mode": "call", "start_at": 2})));
        assert!(!p.advanced(b"\n\n{}\n{\"x\":1}\nnot json\n"));
        assert!(!p.advanced(b"{\"test\":1,\"value\":0}\n{\"test\":3,\"value\":0}\n"), "not the awaited test");
        assert!(!p.advanced(b"{\"test\":2,\"val"), "an unfinished line");
        assert!(p.advanced(b"ue\":[1,2]}\n"));
        assert!(!p.advanced(b"{\"test\":2,\"value\":0}\n"), "test 2 again");
        assert!(p.advanced(b"{\"value\":0,\"test\":3}\n"));
    }

    #[test]
    fn nothing_a_serve_run_writes_restarts_its_timer() {
        let mut p = Progress::new(&job(serde_json::json!({"mode": "serve"})));
        assert!(!p.advanced(b"\n{\"test\":0}\n{\"seq\":1,\"value\":1}\n"));
    }
}
