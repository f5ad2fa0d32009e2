//! The verifier the trainer and the CLI use: a sandbox, a trusted judge and a bounded pool of
//! worker threads, with a batch API.

use std::sync::Arc;

use rayon::prelude::*;

use crate::harness::{TrustedError, TrustedJudge};
use crate::judge::{Judge, PreparedTask};
use crate::native::{NativeConfig, NativeSandbox};
use crate::sandbox::{Sandbox, SandboxError};
use crate::task::Task;
use crate::verdict::TaskVerdict;
use crate::wasm::{WasmConfig, WasmSandbox};

/// Which sandbox runs the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Native,
    Wasm,
}

/// A cause is the error's `source`, not part of its message: `dllm-rl` prints the chain (`{:#}`),
/// which would say it twice. `Sandbox` is the exception: a [`SandboxError`]'s message already
/// ends with its cause (verdicts and logs print it alone, with `{}`), so its chain stops here.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("{0}")]
    Sandbox(SandboxError),
    #[error("task {task}")]
    Task { task: String, source: TrustedError },
    #[error("task {task}")]
    Limits { task: String, source: crate::task::LimitError },
    #[error("cannot build the worker pool")]
    Pool(#[from] rayon::ThreadPoolBuildError),
}

impl From<SandboxError> for VerifierError {
    fn from(e: SandboxError) -> Self {
        VerifierError::Sandbox(e)
    }
}

/// Runs verdicts for many completions at once, `jobs` at a time. Back-pressure is the pool's
/// size: at most `jobs` sandboxes run, whatever the batch size.
pub struct Verifier {
    sandbox: Arc<dyn Sandbox>,
    trusted: TrustedJudge,
    pool: rayon::ThreadPool,
    fail_fast: bool,
}

/// One completion to judge: the index of its task in the prepared slice, and the model text.
#[derive(Debug, Clone)]
pub struct Completion {
    pub task: usize,
    pub text: String,
}

impl Verifier {
    pub fn new(backend: Backend, jobs: usize) -> Result<Self, VerifierError> {
        let sandbox: Arc<dyn Sandbox> = match backend {
            Backend::Native => Arc::new(NativeSandbox::new(NativeConfig::default())?),
            Backend::Wasm => {
                // Instance slots for every worker, with room for slots still being reset.
                let config = WasmConfig { max_concurrent_runs: 2 * jobs.max(1) as u32 + 4, ..WasmConfig::default() };
                Arc::new(WasmSandbox::new(config).map_err(SandboxError::from)?)
            }
        };
        Self::with_sandbox(sandbox, jobs)
    }

    pub fn with_sandbox(sandbox: Arc<dyn Sandbox>, jobs: usize) -> Result<Self, VerifierError> {
        let jobs = jobs.max(1);
        // No more workers than cores: each on a core of its own, with the processes serving
        // it (see `affinity`).
        let cpus = crate::affinity::usable_cpus();
        let pin = jobs <= cpus.len() && std::env::var_os("DLLM_VERIFIER_NO_PINNING").is_none();
        // The wasm guest needs a deep native stack (8 MiB of wasm stack plus host frames).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .stack_size(16 << 20)
            .thread_name(|i| format!("verifier-{i}"))
            .start_handler(move |i| {
                if pin {
                    crate::affinity::pin_this_thread(cpus[i]);
                }
            })
            .build()?;
        let trusted = TrustedJudge::new(&crate::native::default_python());
        Ok(Verifier { sandbox, trusted, pool, fail_fast: false })
    }

    /// Stops judging a completion at its first failing test (see [`Judge::fail_fast`]): what a
    /// pass/fail reward needs, at a fraction of the runs for wrong completions. Off by default:
    /// a fraction-of-tests reward and the audit's per-test verdicts need every test run.
    pub fn with_fail_fast(mut self, on: bool) -> Self {
        self.fail_fast = on;
        self
    }

    pub fn backend_name(&self) -> &'static str {
        self.sandbox.name()
    }

    /// Checks a task's limits and analyses its assertion tests, once per task.
    pub fn prepare(&self, task: Task) -> Result<PreparedTask, VerifierError> {
        let id = task.id.clone();
        task.limits.check().map_err(|source| VerifierError::Limits { task: id.clone(), source })?;
        PreparedTask::new(task, &self.trusted).map_err(|source| VerifierError::Task { task: id, source })
    }

    pub fn prepare_all(&self, tasks: Vec<Task>) -> Vec<Result<PreparedTask, VerifierError>> {
        self.pool.install(|| tasks.into_par_iter().map(|t| self.prepare(t)).collect())
    }

    /// Judges every completion; the verdicts come back in the completions' order.
    /// `on_done` is called after each one (for progress bars), from worker threads.
    ///
    /// A verdict the sandbox spoiled is judged again at once, on a fresh sandbox (a sandbox
    /// that fails is replaced). If it fails again while the sandbox judges a known program
    /// fine, the candidate caused it, and answers for it ([`TaskVerdict::charge_sandbox_failure`]):
    /// crashing the sandbox never beats failing honestly. Otherwise it stays a retryable
    /// `sandbox_error`.
    pub fn verify_batch(
        &self,
        tasks: &[PreparedTask],
        completions: &[Completion],
        on_done: &(dyn Fn(&TaskVerdict) + Sync),
    ) -> Vec<TaskVerdict> {
        let judge = Judge { sandbox: self.sandbox.as_ref(), trusted: &self.trusted, fail_fast: self.fail_fast };
        self.pool.install(|| {
            completions
                .par_iter()
                .with_max_len(1)
                .map(|c| {
                    let mut verdict = judge.judge(&tasks[c.task], &c.text);
                    if verdict.sandbox_error {
                        verdict = judge.judge(&tasks[c.task], &c.text);
                        if verdict.sandbox_error && self.sandbox_works(&judge) {
                            verdict.charge_sandbox_failure();
                        }
                    }
                    on_done(&verdict);
                    verdict
                })
                .collect()
        })
    }

    /// Whether the sandbox judges a known, honest program right (after a completion broke it
    /// twice: the sandbox, not the completion, may be what is broken).
    fn sandbox_works(&self, judge: &Judge<'_>) -> bool {
        let canary: Task = serde_json::from_value(serde_json::json!({
            "id": "canary", "kind": "stdio", "tests": [{"stdin": "20\n", "stdout": "21\n"}],
        }))
        .expect("a valid task");
        let Ok(prepared) = PreparedTask::new(canary, &self.trusted) else { return false };
        judge.judge(&prepared, "print(int(input()) + 1)\n").all_passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and its causes as `dllm-rl` prints them (anyhow's `{:#}`).
    fn chain(e: &dyn std::error::Error) -> String {
        std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
    }

    #[test]
    fn each_cause_is_said_once() {
        let task = VerifierError::Task { task: "t".into(), source: TrustedError::Tests("the tests do not parse".into()) };
        assert_eq!(chain(&task), "task t: the tests do not parse");
        let sandbox = VerifierError::from(SandboxError::Io(std::io::Error::other("broken pipe")));
        assert_eq!(chain(&sandbox), "sandbox I/O failed: broken pipe");
    }
}
