//! SandboxFusion's request and response shapes, and the blocking work behind them.
//!
//! `/run_code` means "run this program": exit 0 is `Success`, as in SandboxFusion, so a
//! `sys.exit(0)` program succeeds there by definition. `/submit` is where a completion is
//! *judged*: the row in `provided_data` becomes one of our tasks (through the prompts crate's
//! SandboxFusion importers) and our trusted judge decides, so exit tricks and always-equal
//! objects pass nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dllm_prompts::Format;
use dllm_verifier::sandbox::{End, Job, RunLimits};
use dllm_verifier::{extract_code, CodeSource, Completion, Sandbox, Task, TestResult, TestSpec, TestVerdict, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a request may ask for at most; past a cap the answer is a 400 naming the field.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub body_bytes: usize,
    pub code_bytes: usize,
    pub stdin_bytes: usize,
    pub run_timeout_s: f64,
}

/// A request the server will not run: the message names the field (the answer is a 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// SandboxFusion's default `run_timeout`, seconds.
const DEFAULT_RUN_TIMEOUT_S: f64 = 10.0;
/// SandboxFusion keeps at most 1 MiB of each stream.
const OUTPUT_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// The shapes (sandbox/server/sandbox_api.py, sandbox/datasets/types.py).

#[derive(Debug, Deserialize)]
pub struct RunCodeRequest {
    pub code: String,
    pub language: String,
    #[serde(default)]
    pub stdin: Option<String>,
    // `compile_timeout` is accepted (unknown keys are ignored) and unused: Python is not compiled.
    #[serde(default)]
    pub run_timeout: Option<f64>,
    /// -1 (SandboxFusion's default) means the sandbox's own limit.
    #[serde(default, rename = "memory_limit_MB")]
    pub memory_limit_mb: Option<i64>,
    #[serde(default)]
    pub files: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub fetch_files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RunStatus {
    Success,
    Failed,
    SandboxError,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Success => "Success",
            RunStatus::Failed => "Failed",
            RunStatus::SandboxError => "SandboxError",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CommandStatus {
    Finished,
    Error,
    TimeLimitExceeded,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandRunResult {
    pub status: CommandStatus,
    pub execution_time: Option<f64>,
    pub return_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunCodeResponse {
    pub status: RunStatus,
    pub message: String,
    pub compile_result: Option<CommandRunResult>,
    pub run_result: Option<CommandRunResult>,
    pub executor_pod_name: Option<String>,
    pub files: BTreeMap<String, String>,
}

impl RunCodeResponse {
    /// The answer to a request that cannot run (an unsupported language, a cap): SandboxFusion's
    /// shape, so that its clients print the message.
    pub fn refusal(message: &str) -> Self {
        RunCodeResponse {
            status: RunStatus::SandboxError,
            message: message.to_owned(),
            compile_result: None,
            run_result: None,
            executor_pod_name: None,
            files: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct SubmitRequest {
    pub dataset: String,
    pub id: Value,
    pub completion: String,
    #[serde(default)]
    pub config: TestConfig,
}

/// SandboxFusion's TestConfig; the keys this server does not use are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct TestConfig {
    #[serde(default)]
    pub dataset_type: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub run_timeout: Option<f64>,
    #[serde(default)]
    pub provided_data: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct EvalTestCase {
    pub passed: bool,
    pub exec_info: RunCodeResponse,
    pub test_info: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct EvalResult {
    pub id: Value,
    pub accepted: bool,
    pub extracted_code: String,
    pub full_code: Option<String>,
    pub test_code: Option<String>,
    pub tests: Vec<EvalTestCase>,
    pub extracted_type: &'static str,
    /// Our verdict (`verdict`, `pass_fraction`, `sandbox_error`), beyond SandboxFusion's fields.
    pub extra: Value,
}

// ---------------------------------------------------------------------------------------------
// The work.

/// The sandbox and the judge, shared by every request. Its methods block (sandbox runs, the
/// trusted judge): the server calls them on blocking threads.
pub struct Service {
    sandbox: Arc<dyn Sandbox>,
    verifier: Verifier,
    pub caps: Caps,
}

/// A `/submit` made into a task: checked, ready for the sandbox.
pub struct Submission {
    id: Value,
    task: Task,
    /// The text the judge extracts code from.
    completion: String,
}

impl Service {
    pub fn new(sandbox: Arc<dyn Sandbox>, verifier: Verifier, caps: Caps) -> Self {
        Service { sandbox, verifier, caps }
    }

    /// Checks a `/run_code` request against the caps and the languages served, before it
    /// takes a place in the queue.
    pub fn check_run_code(&self, r: &RunCodeRequest) -> Result<(), BadRequest> {
        if !matches!(r.language.as_str(), "python" | "python3") {
            return Err(bad(format!(
                "language: `{}` is not served here; this server runs `python` only (pytest and compiled languages are not done yet)",
                r.language
            )));
        }
        if r.code.len() > self.caps.code_bytes {
            return Err(bad(format!("code: {} bytes, more than this server's cap of {}", r.code.len(), self.caps.code_bytes)));
        }
        if let Some(stdin) = &r.stdin {
            if stdin.len() > self.caps.stdin_bytes {
                return Err(bad(format!("stdin: {} bytes, more than this server's cap of {}", stdin.len(), self.caps.stdin_bytes)));
            }
        }
        self.check_timeout("run_timeout", r.run_timeout)?;
        if let Some(mb) = r.memory_limit_mb {
            if mb != -1 && !(16..=1 << 20).contains(&mb) {
                return Err(bad(format!("memory_limit_MB: {mb} is neither -1 nor MiB in [16, 1048576]")));
            }
        }
        // The program runs without a working folder of its own: files cannot be laid in it yet.
        if !r.files.is_empty() {
            return Err(bad("files: not supported by this server yet (send none)"));
        }
        if !r.fetch_files.is_empty() {
            return Err(bad("fetch_files: not supported by this server yet (send none)"));
        }
        Ok(())
    }

    fn check_timeout(&self, field: &str, seconds: Option<f64>) -> Result<(), BadRequest> {
        match seconds {
            Some(t) if !(t.is_finite() && t > 0.0) => Err(bad(format!("{field}: {t} is not a positive number of seconds"))),
            Some(t) if t > self.caps.run_timeout_s => {
                Err(bad(format!("{field}: {t} s, more than this server's cap of {} s", self.caps.run_timeout_s)))
            }
            _ => Ok(()),
        }
    }

    /// Runs a checked `/run_code` request: the program as `__main__` in the sandbox, with its
    /// stdin; the status follows SandboxFusion's rule (exit 0 and no time-out is `Success`).
    pub fn run_code(&self, r: &RunCodeRequest) -> RunCodeResponse {
        let timeout = r.run_timeout.unwrap_or(DEFAULT_RUN_TIMEOUT_S);
        let memory_mb = match r.memory_limit_mb {
            Some(mb) if mb > 0 => mb as u64,
            _ => dllm_verifier::Limits::default().memory_mb,
        };
        let job = Job {
            spec: json!({"mode": "stdio", "code": r.code}),
            stdin: r.stdin.clone().unwrap_or_default().into_bytes(),
            limits: RunLimits {
                // Checked positive and capped; the scale makes a wasm second worth a native one.
                wall: Duration::try_from_secs_f64(timeout * self.sandbox.time_scale()).unwrap_or(Duration::from_secs(60)),
                idle: None,
                memory_bytes: memory_mb << 20,
                output_bytes: OUTPUT_BYTES,
                result_bytes: OUTPUT_BYTES,
            },
        };
        let outcome = match self.sandbox.run(&job) {
            Ok(o) => o,
            Err(e) => {
                let mut response = RunCodeResponse::refusal(&e.to_string());
                response.run_result = Some(CommandRunResult {
                    status: CommandStatus::Error,
                    execution_time: None,
                    return_code: None,
                    stdout: None,
                    stderr: Some(e.to_string()),
                });
                return response;
            }
        };
        let stdout = String::from_utf8_lossy(&outcome.stdout).into_owned();
        let mut stderr = String::from_utf8_lossy(&outcome.stderr).into_owned();
        // The harness catches what the program raises, so Python's traceback never reaches
        // stderr; its last line (the exception and message) is written there instead.
        let (status, return_code, message) = match &outcome.end {
            End::TimedOut => (CommandStatus::TimeLimitExceeded, None, format!("time limit of {timeout} s exceeded")),
            End::OutputLimit => (CommandStatus::Finished, Some(1), format!("output past {OUTPUT_BYTES} bytes; the program was stopped")),
            End::Crashed(what) => {
                stderr.push_str(&format!("\n{what}\n"));
                (CommandStatus::Finished, Some(-1), format!("the program was killed: {what}"))
            }
            End::Exited => match outcome.results.as_slice() {
                [line] if !outcome.malformed && line.get("done") == Some(&Value::Bool(true)) => {
                    match line.get("raise").and_then(Value::as_str) {
                        None => (CommandStatus::Finished, Some(0), String::new()),
                        Some("SystemExit") => {
                            let text = line.get("message").and_then(Value::as_str).unwrap_or_default();
                            // sys.exit("text") prints the text and exits 1, as Python does.
                            let code = text.trim().parse::<i32>().unwrap_or_else(|_| {
                                stderr.push_str(&format!("{text}\n"));
                                1
                            });
                            (CommandStatus::Finished, Some(code), String::new())
                        }
                        Some(name) => {
                            let text = line.get("message").and_then(Value::as_str).unwrap_or_default();
                            stderr.push_str(&if text.is_empty() { format!("{name}\n") } else { format!("{name}: {text}\n") });
                            (CommandStatus::Finished, Some(1), String::new())
                        }
                    }
                }
                // os._exit() or a closed result channel: the status is not known; not zero.
                _ => (CommandStatus::Finished, Some(1), "the program ended without returning to the harness (os._exit?)".into()),
            },
        };
        let run_status = if status == CommandStatus::Finished && return_code == Some(0) { RunStatus::Success } else { RunStatus::Failed };
        RunCodeResponse {
            status: run_status,
            message,
            compile_result: None,
            run_result: Some(CommandRunResult {
                status,
                execution_time: Some(outcome.seconds),
                return_code,
                stdout: Some(stdout),
                stderr: Some(stderr),
            }),
            executor_pod_name: None,
            files: BTreeMap::new(),
        }
    }

    /// Makes a `/submit` request into a task: the row in `config.provided_data`, read by the
    /// importer of its dataset. Cheap (no sandbox): done before the request is queued.
    pub fn submission(&self, r: SubmitRequest) -> Result<Submission, BadRequest> {
        if let Some(language) = r.config.language.as_deref() {
            if !matches!(language, "python" | "python3") {
                return Err(bad(format!("config.language: `{language}` is not served here; this server judges `python` only")));
            }
        }
        if r.completion.len() > self.caps.code_bytes {
            return Err(bad(format!(
                "completion: {} bytes, more than this server's cap of {}",
                r.completion.len(),
                self.caps.code_bytes
            )));
        }
        self.check_timeout("config.run_timeout", r.config.run_timeout)?;
        let Some(row) = r.config.provided_data else {
            return Err(bad("config.provided_data: missing; this server holds no datasets, so the row must come inline"));
        };
        let Value::Object(mut row) = row else {
            return Err(bad("config.provided_data: not a JSON object"));
        };
        let format = dataset_format(&r.dataset, r.config.dataset_type.as_deref(), &row).ok_or_else(|| {
            bad(format!(
                "dataset: `{}` is not one this server knows (code_contests/CommonOJ, LiveCodeBench, MBPP, HumanEval), \
                 nor does provided_data have their shape",
                r.dataset
            ))
        })?;
        // The importers read whole dataset rows; a client sends what judging needs. The rest
        // (statement, reference solution) is filled in empty.
        let id_text = match &r.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut fill = |key: &str, value: Value| {
            row.entry(key.to_owned()).or_insert(value);
        };
        match format {
            Format::SandboxfusionMbpp => {
                fill("id", r.id.clone());
                fill("content", json!(""));
                fill("canonical_solution", json!(""));
                fill("labels", json!({}));
            }
            Format::SandboxfusionCommonOj => {
                fill("id", r.id.clone());
                fill("content", json!(""));
            }
            Format::Humaneval => {
                fill("task_id", json!(id_text));
                fill("canonical_solution", json!(""));
            }
            _ => {
                fill("content", json!(""));
                fill("labels", json!({}));
            }
        }
        let prompt = row.get("prompt").and_then(Value::as_str).map(str::to_owned);
        let line = Value::Object(row).to_string();
        let imported = dllm_prompts::import_text(format, Path::new("provided_data"), &line)
            .map_err(|e| bad(format!("config.provided_data: {e}")))?;
        if let Some(e) = imported.errors.first() {
            return Err(bad(format!("config.provided_data.{}: {}", e.field, e.message)));
        }
        let Some(mut task) = imported.tasks.into_iter().next() else {
            return Err(bad("config.provided_data: no task in it"));
        };
        if let TestSpec::Stdio { tests, .. } = &task.spec {
            if let Some((i, t)) = tests.iter().enumerate().find(|(_, t)| t.stdin.len() > self.caps.stdin_bytes) {
                return Err(bad(format!(
                    "config.provided_data.test[{i}].input.stdin: {} bytes, more than this server's cap of {}",
                    t.stdin.len(),
                    self.caps.stdin_bytes
                )));
            }
        }
        if let Some(t) = r.config.run_timeout {
            task.limits.time_s = t;
        }
        let mut completion = r.completion;
        // HumanEval completions continue the prompt (the function's body) unless they define
        // the function themselves, as SandboxFusion assumes too.
        if let (Format::Humaneval, Some(prompt), TestSpec::Assert { entry_points, .. }) = (format, prompt, &task.spec) {
            let defines = |code: &str| entry_points.iter().all(|e| code.contains(&format!("def {e}(")));
            if let Some(code) = extract_code(&completion).filter(|e| !defines(&e.code)) {
                completion = format!("{prompt}{}", code.code);
            }
        }
        Ok(Submission { id: r.id, task, completion })
    }

    /// Judges a submission with the trusted judge. A task whose own tests cannot judge any
    /// code is the request's fault (a 400), not the completion's.
    pub fn submit(&self, s: Submission) -> Result<(EvalResult, &'static str), BadRequest> {
        let prepared = self.verifier.prepare(s.task).map_err(|e| bad(format!("config.provided_data: {e:#}")))?;
        if let Some(why) = &prepared.invalid {
            return Err(bad(format!("config.provided_data: its tests cannot judge any code: {why}")));
        }
        let completions = [Completion { task: 0, text: s.completion.clone() }];
        let verdicts = self.verifier.verify_batch(std::slice::from_ref(&prepared), &completions, &|_| {});
        let Some(verdict) = verdicts.into_iter().next() else {
            return Err(bad("no verdict"));
        };
        let extracted = extract_code(&s.completion);
        let stdio = match &prepared.task.spec {
            TestSpec::Stdio { tests, .. } => Some(tests),
            _ => None,
        };
        let test_code = match &prepared.task.spec {
            TestSpec::Assert { test_code, .. } | TestSpec::Pytest { test_code, .. } => Some(test_code.clone()),
            _ => None,
        };
        let tests = verdict
            .tests
            .iter()
            .enumerate()
            .map(|(i, t)| EvalTestCase {
                passed: t.verdict.passed(),
                exec_info: exec_info(t),
                test_info: stdio.and_then(|tests| tests.get(i)).map(|case| {
                    json!({"input": {"stdin": case.stdin}, "output": {"stdout": case.stdout}, "verdict": t.verdict.name()})
                }).or_else(|| Some(json!({"verdict": t.verdict.name()}))),
            })
            .collect();
        let summary = verdict.summary();
        let result = EvalResult {
            id: s.id,
            accepted: verdict.all_passed && !verdict.sandbox_error,
            extracted_code: extracted.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
            full_code: None,
            test_code,
            tests,
            extracted_type: match extracted.map(|e| e.source) {
                Some(CodeSource::Fenced) => "fenced",
                Some(CodeSource::UnclosedFence) => "incomplete_fenced",
                Some(CodeSource::Raw) => "heuristic",
                None => "empty",
            },
            extra: json!({
                "judge": "dllm-rl",
                "verdict": summary,
                "pass_fraction": verdict.pass_fraction,
                "sandbox_error": verdict.sandbox_error,
            }),
        };
        Ok((result, summary))
    }
}

/// One test's verdict as SandboxFusion's `exec_info`.
fn exec_info(t: &TestResult) -> RunCodeResponse {
    let (status, command, return_code) = match &t.verdict {
        TestVerdict::Passed => (RunStatus::Success, CommandStatus::Finished, Some(0)),
        TestVerdict::Timeout => (RunStatus::Failed, CommandStatus::TimeLimitExceeded, None),
        TestVerdict::SandboxError { .. } => (RunStatus::SandboxError, CommandStatus::Error, None),
        _ => (RunStatus::Failed, CommandStatus::Finished, Some(1)),
    };
    let message = match &t.verdict {
        TestVerdict::RuntimeError { exception } => format!("runtime_error: {exception}"),
        TestVerdict::SandboxError { message } => format!("sandbox_error: {message}"),
        other => other.name().to_owned(),
    };
    RunCodeResponse {
        status,
        message,
        compile_result: None,
        run_result: Some(CommandRunResult {
            status: command,
            execution_time: Some(t.seconds),
            return_code,
            stdout: Some(t.stdout.clone()),
            stderr: Some(t.stderr.clone()),
        }),
        executor_pod_name: None,
        files: BTreeMap::new(),
    }
}

/// The importer for a dataset: by its name (or SandboxFusion's `dataset_type`), else by the
/// row's shape.
fn dataset_format(dataset: &str, dataset_type: Option<&str>, row: &serde_json::Map<String, Value>) -> Option<Format> {
    let norm = |s: &str| s.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
    for name in [Some(dataset), dataset_type].into_iter().flatten().map(norm) {
        if name.contains("codecontests") || name.contains("commonoj") {
            return Some(Format::SandboxfusionCommonOj);
        }
        if name.contains("livecodebench") || name.contains("lcb") {
            return Some(Format::SandboxfusionLivecodebench);
        }
        if name.contains("mbpp") {
            return Some(Format::SandboxfusionMbpp);
        }
        if name.contains("humaneval") {
            return Some(Format::Humaneval);
        }
    }
    if row.contains_key("test_list") {
        Some(Format::SandboxfusionMbpp)
    } else if row.contains_key("entry_point") {
        Some(Format::Humaneval)
    } else if row.get("test").is_some_and(Value::is_array) {
        Some(Format::SandboxfusionCommonOj)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_are_known_by_name_then_by_shape() {
        let empty = serde_json::Map::new();
        assert_eq!(dataset_format("code_contests", None, &empty), Some(Format::SandboxfusionCommonOj));
        assert_eq!(dataset_format("x", Some("CommonOJDataset"), &empty), Some(Format::SandboxfusionCommonOj));
        assert_eq!(dataset_format("mbpp_plus", None, &empty), Some(Format::SandboxfusionMbpp));
        assert_eq!(dataset_format("HumanEval+", None, &empty), Some(Format::Humaneval));
        assert_eq!(dataset_format("live_code_bench_v1", None, &empty), Some(Format::SandboxfusionLivecodebench));
        let row = json!({"test_list": []});
        assert_eq!(dataset_format("mine", None, row.as_object().unwrap()), Some(Format::SandboxfusionMbpp));
        assert_eq!(dataset_format("mine", None, &empty), None);
    }
}
