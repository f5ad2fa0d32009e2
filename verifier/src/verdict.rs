//! Verdicts: per test and per task. Decided in the trusted parent, never read from the sandbox.

use serde::{Deserialize, Serialize};

use crate::extract::CodeSource;

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum TestVerdict {
    Passed,
    WrongAnswer,
    /// The candidate raised (or exited non-zero, or ended without finishing).
    RuntimeError { exception: String },
    Timeout,
    MemoryLimit,
    OutputLimit,
    /// The sandbox itself failed (could not start, protocol broken): retryable, and not counted
    /// against the policy unless it happens again on a fresh sandbox that judges other code
    /// fine (see [`TaskVerdict::sandbox_failure_charged`]).
    SandboxError { message: String },
    /// Not run: an earlier test failed and the verifier stops at the first failure
    /// (`fail_fast`, SandboxFusion's default). Counts as not passed.
    NotRun,
}

impl TestVerdict {
    pub fn passed(&self) -> bool {
        matches!(self, TestVerdict::Passed)
    }

    /// Short name for summaries: `passed`, `wrong_answer`, ...
    pub fn name(&self) -> &'static str {
        match self {
            TestVerdict::Passed => "passed",
            TestVerdict::WrongAnswer => "wrong_answer",
            TestVerdict::RuntimeError { .. } => "runtime_error",
            TestVerdict::Timeout => "timeout",
            TestVerdict::MemoryLimit => "memory_limit",
            TestVerdict::OutputLimit => "output_limit",
            TestVerdict::SandboxError { .. } => "sandbox_error",
            TestVerdict::NotRun => "not_run",
        }
    }
}

/// One test's result, with what the parent saw (trimmed) for the audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    #[serde(flatten)]
    pub verdict: TestVerdict,
    /// Wall-clock seconds of the run this test was part of.
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// The outcome of one completion on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskVerdict {
    pub task_id: String,
    /// `None` when the completion had no code (the `no_code` verdict).
    pub code_source: Option<CodeSource>,
    pub tests: Vec<TestResult>,
    pub all_passed: bool,
    /// Passed tests over all tests (0 when there is no code or no test).
    pub pass_fraction: f64,
    pub seconds: f64,
    /// The run failed for reasons of the sandbox, not of the candidate: retry it.
    pub sandbox_error: bool,
    /// Judging this completion broke the sandbox twice, on fresh sandboxes that judge other
    /// code fine: the failure is the candidate's (a `runtime_error`), never a way to dodge a
    /// reward by crashing the sandbox.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox_failure_charged: bool,
    /// The task's own tests cannot run (e.g. they do not parse): no completion can pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_error: Option<String>,
}

impl TaskVerdict {
    pub fn from_tests(task_id: &str, code_source: Option<CodeSource>, tests: Vec<TestResult>, seconds: f64) -> Self {
        let passed = tests.iter().filter(|t| t.verdict.passed()).count();
        let sandbox_error = tests.iter().any(|t| matches!(t.verdict, TestVerdict::SandboxError { .. }));
        TaskVerdict {
            task_id: task_id.to_owned(),
            code_source,
            all_passed: !tests.is_empty() && passed == tests.len() && code_source.is_some(),
            pass_fraction: if tests.is_empty() { 0.0 } else { passed as f64 / tests.len() as f64 },
            tests,
            seconds,
            sandbox_error,
            sandbox_failure_charged: false,
            task_error: None,
        }
    }

    /// Makes the candidate answer for a sandbox failure it caused (see
    /// `sandbox_failure_charged`): each spoiled test becomes a `runtime_error`.
    pub fn charge_sandbox_failure(&mut self) {
        for t in &mut self.tests {
            if let TestVerdict::SandboxError { message } = &t.verdict {
                let message: String = message.chars().take(200).collect();
                t.verdict = TestVerdict::RuntimeError { exception: format!("sandbox_failure: {message}") };
            }
        }
        self.sandbox_error = false;
        self.sandbox_failure_charged = true;
        self.all_passed = false;
        let passed = self.tests.iter().filter(|t| t.verdict.passed()).count();
        self.pass_fraction = if self.tests.is_empty() { 0.0 } else { passed as f64 / self.tests.len() as f64 };
    }

    /// The task-level verdict name: `passed`, `no_code`, or the first failing test's verdict.
    pub fn summary(&self) -> &'static str {
        if self.code_source.is_none() {
            return "no_code";
        }
        if self.task_error.is_some() {
            return "task_error";
        }
        if self.tests.is_empty() {
            return "no_tests";
        }
        self.tests.iter().find(|t| !t.verdict.passed()).map_or("passed", |t| t.verdict.name())
    }
}
