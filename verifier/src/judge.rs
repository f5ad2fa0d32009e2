//! The judge: turns a task and a completion into sandbox runs and decides each test in the
//! trusted parent.
//!
//! Rules that make the verdict hard to fool:
//! - the exit status never means "passed"; every test needs exactly one well-formed result,
//!   and a missing, repeated or malformed one is a failure;
//! - the sandbox sees inputs, never expected values: stdout and returned values are compared
//!   here, and assertion tests run in the trusted process, which calls the candidate across
//!   the boundary (see `harness`);
//! - values cross as plain data, so a candidate object cannot answer `==` for itself.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::compare::{text_matches, value_matches};
use crate::extract::extract_code;
use crate::harness::{SessionEnd, TestRun, TestShape, TrustedError, TrustedJudge};
use crate::sandbox::{End, Job, Outcome, RunLimits, Sandbox, SandboxError};
use crate::task::{Task, TestSpec};
use crate::verdict::{TaskVerdict, TestResult, TestVerdict};

/// Bytes of stdout/stderr kept in each test result for the audit.
const EXCERPT_BYTES: usize = 2048;
/// Start-up allowance on top of the per-test limit (loading the candidate's module).
const STARTUP: Duration = Duration::from_millis(1000);

/// Least time the tests' own work (in the trusted process) gets, whatever the task's limits: on
/// a busy host the trusted process may start late.
const TESTS_DEADLINE_FLOOR: Duration = Duration::from_secs(5);

/// A task made ready for judging: its assertion tests analysed once, not per completion.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub task: Task,
    shape: Option<TestShape>,
    /// Why the task's own tests cannot judge anything (they do not parse, never reach the
    /// candidate, ...); every completion of such a task gets the `task_error` verdict.
    pub invalid: Option<String>,
}

impl PreparedTask {
    /// Fails only when the trusted judge itself fails; broken tests make an `invalid` task.
    pub fn new(task: Task, trusted: &TrustedJudge) -> Result<Self, TrustedError> {
        let (shape, invalid) = match task.spec.assertion_tests() {
            Some(tests) => match trusted.analyze(&tests, &task.prelude) {
                Ok(shape) => {
                    let invalid = shape.invalid.clone();
                    (Some(shape), invalid)
                }
                Err(TrustedError::Tests(message)) => (None, Some(message)),
                Err(e) => return Err(e),
            },
            None => (None, None),
        };
        Ok(PreparedTask { task, shape, invalid })
    }

    /// Number of tests a verdict will have.
    pub fn test_count(&self) -> usize {
        match (&self.task.spec, &self.shape) {
            (TestSpec::Pytest { .. }, Some(s)) => s.functions,
            (_, Some(s)) => s.asserts,
            (_, None) => self.task.declared_tests().unwrap_or(0),
        }
    }
}

/// Judges completions with one sandbox and one trusted judge.
pub struct Judge<'a> {
    pub sandbox: &'a dyn Sandbox,
    pub trusted: &'a TrustedJudge,
    /// Stop at a completion's first failing test; the tests after it are `not_run`. Saves the
    /// runs (and the time limits) of the remaining tests of stdio tasks, and the fresh runs that
    /// a call task's tests get after a crash or timeout. Tests that share one run (assert and
    /// pytest tasks, a call task's run) are all judged either way.
    pub fail_fast: bool,
}

/// The message of a task whose tests never called the candidate.
pub const NEVER_CALLED: &str = "the tests never called the candidate";

impl Judge<'_> {
    /// Judges one completion (model text; the code is extracted from it).
    pub fn judge(&self, prepared: &PreparedTask, completion: &str) -> TaskVerdict {
        let task = &prepared.task;
        let Some(extracted) = extract_code(completion) else {
            return TaskVerdict::from_tests(&task.id, None, Vec::new(), 0.0);
        };
        if let Some(message) = &prepared.invalid {
            let mut verdict = TaskVerdict::from_tests(&task.id, Some(extracted.source), Vec::new(), 0.0);
            verdict.task_error = Some(message.clone());
            return verdict;
        }
        let with_prelude = || {
            if task.prelude.is_empty() {
                extracted.code.clone()
            } else {
                format!("{}\n{}", task.prelude, extracted.code)
            }
        };
        let (tests, seconds, task_error) = match &task.spec {
            TestSpec::Stdio { .. } => without_task_error(self.stdio(task, &with_prelude())),
            TestSpec::Call { .. } => without_task_error(self.call(task, &with_prelude())),
            TestSpec::Assert { .. } | TestSpec::Pytest { .. } => self.assert(prepared, &extracted.code),
        };
        let mut verdict = TaskVerdict::from_tests(&task.id, Some(extracted.source), tests, seconds);
        verdict.task_error = task_error;
        if verdict.task_error.is_some() {
            verdict.all_passed = false;
        }
        verdict
    }

    fn limits(&self, task: &Task, wall: Duration, idle: Option<Duration>) -> RunLimits {
        RunLimits {
            wall,
            idle,
            memory_bytes: task.limits.memory_mb << 20,
            output_bytes: task.limits.output_bytes as usize,
            result_bytes: (task.limits.output_bytes as usize).max(1 << 20) * 16,
        }
    }

    fn per_test(&self, task: &Task) -> Duration {
        // Limits are checked when a task is prepared; a bad one that got here anyway is no panic.
        Duration::try_from_secs_f64(task.limits.time_s * self.sandbox.time_scale()).unwrap_or(Duration::from_secs(3600))
    }

    fn stdio(&self, task: &Task, code: &str) -> (Vec<TestResult>, f64) {
        let TestSpec::Stdio { tests, comparator } = &task.spec else { unreachable!("stdio task") };
        let limits = self.limits(task, self.per_test(task) + STARTUP, None);
        let mut results = Vec::with_capacity(tests.len());
        let mut total = 0.0;
        for test in tests {
            if self.fail_fast && results.last().is_some_and(failed) {
                results.push(result_without_run(TestVerdict::NotRun));
                continue;
            }
            let job = Job {
                spec: json!({"mode": "stdio", "code": code}),
                stdin: test.stdin.as_bytes().to_vec(),
                limits,
            };
            let outcome = match self.sandbox.run(&job) {
                Ok(o) => o,
                Err(e) => {
                    results.push(sandbox_failure(&e));
                    continue;
                }
            };
            total += outcome.seconds;
            let verdict = match ended_badly(&outcome) {
                Some(v) => v,
                None => match outcome.results.as_slice() {
                    [line] if line.get("done") == Some(&Value::Bool(true)) && !outcome.malformed => {
                        match raised(line) {
                            Some(v) => v,
                            None if text_matches(&outcome.stdout, &test.stdout, *comparator) => TestVerdict::Passed,
                            None => TestVerdict::WrongAnswer,
                        }
                    }
                    _ => no_result(),
                },
            };
            results.push(result(verdict, &outcome));
        }
        (results, total)
    }

    fn call(&self, task: &Task, code: &str) -> (Vec<TestResult>, f64) {
        let TestSpec::Call { entry_point, class_name, tests, comparator } = &task.spec else {
            unreachable!("call task")
        };
        let inputs: Vec<Value> = tests.iter().map(|t| json!({"args": t.args, "kwargs": t.kwargs})).collect();
        let per_test = self.per_test(task);
        let mut verdicts: Vec<Option<TestResult>> = vec![None; tests.len()];
        let mut total = 0.0;
        let mut start_at = 0;
        while start_at < tests.len() {
            let remaining = (tests.len() - start_at) as u32;
            let job = Job {
                spec: json!({"mode": "call", "code": code, "entry": entry_point, "class_name": class_name,
                             "tests": inputs, "start_at": start_at}),
                stdin: Vec::new(),
                limits: self.limits(task, per_test * remaining + STARTUP, Some(per_test + STARTUP)),
            };
            let outcome = match self.sandbox.run(&job) {
                Ok(o) => o,
                Err(e) => {
                    for v in verdicts.iter_mut().skip(start_at) {
                        *v = Some(sandbox_failure(&e));
                    }
                    break;
                }
            };
            total += outcome.seconds;
            if let Some(load) = outcome.results.iter().find_map(|l| l.get("load")) {
                let verdict = raised(load).unwrap_or_else(no_result);
                for v in verdicts.iter_mut().skip(start_at) {
                    *v = Some(result(verdict.clone(), &outcome));
                }
                break;
            }
            let mut lines: HashMap<usize, Vec<&Value>> = HashMap::new();
            for line in &outcome.results {
                if let Some(i) = line.get("test").and_then(Value::as_u64) {
                    lines.entry(i as usize).or_default().push(line);
                }
            }
            let mut next = tests.len();
            for i in start_at..tests.len() {
                let verdict = match lines.get(&i).map(Vec::as_slice) {
                    Some([line]) if !outcome.malformed => match (raised(line), line.get("value")) {
                        (Some(v), _) => v,
                        (None, Some(value)) if value_matches(value, &tests[i].expected, *comparator) => {
                            TestVerdict::Passed
                        }
                        (None, _) => TestVerdict::WrongAnswer,
                    },
                    Some(_) => malformed(),
                    None => {
                        // The run ended before this test reported: it is the culprit; the
                        // tests after it get a fresh run.
                        next = i + 1;
                        ended_badly(&outcome).unwrap_or_else(no_result)
                    }
                };
                verdicts[i] = Some(result(verdict, &outcome));
                if next != tests.len() {
                    break;
                }
            }
            if self.fail_fast && next != tests.len() {
                for v in verdicts.iter_mut().skip(next) {
                    *v = Some(result_without_run(TestVerdict::NotRun));
                }
                break;
            }
            start_at = next;
        }
        let results = verdicts.into_iter().map(|v| v.unwrap_or_else(|| result_without_run(no_result()))).collect();
        (results, total)
    }

    /// An assertion or pytest task: one serve run of the candidate, its tests run by the
    /// trusted judge. Returns the tests, the seconds, and a task error when the tests never
    /// called the candidate (no completion could fail them).
    fn assert(&self, prepared: &PreparedTask, code: &str) -> (Vec<TestResult>, f64, Option<String>) {
        let task = &prepared.task;
        let tests = task.spec.assertion_tests().expect("assert or pytest task");
        let count = prepared.test_count();
        let n = count.max(1) as u32;
        let per_test = self.per_test(task);
        let wall = per_test * n + STARTUP;
        let job = Job {
            spec: json!({"mode": "serve", "prelude": task.prelude, "code": code, "setup": tests.test_setup}),
            stdin: Vec::new(),
            limits: self.limits(task, wall, Some(per_test + STARTUP)),
        };
        let all = |verdict: TestVerdict, outcome: Option<&Outcome>| -> Vec<TestResult> {
            (0..count)
                .map(|_| outcome.map_or_else(|| result_without_run(verdict.clone()), |o| result(verdict.clone(), o)))
                .collect()
        };
        let trusted_failure = |e: &TrustedError| TestVerdict::SandboxError { message: e.to_string() };
        // The tests' own work gets as long as the candidate's: test code looping over a huge
        // returned value must not stall training.
        let session = match self.trusted.session(&tests, &task.prelude, wall.max(TESTS_DEADLINE_FLOOR)) {
            Ok(s) => s,
            Err(e) => return (all(trusted_failure(&e), None), 0.0, None),
        };
        let (outcome, session) = self.sandbox.converse(&job, Box::new(session));
        let Ok(session) = (session as Box<dyn std::any::Any>).downcast::<crate::harness::Session>() else {
            unreachable!("the sandbox returns the session it was given")
        };
        let end = outcome.as_ref().ok().and_then(ended_badly).map_or("exited", |v| v.name());
        let finished = self.trusted.finish(*session, end);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => return (all(TestVerdict::SandboxError { message: e.to_string() }, None), 0.0, None),
        };
        let seconds = outcome.seconds;
        let run = match finished {
            SessionEnd::Tests(run) => run,
            SessionEnd::LoadFailed(load) => {
                let verdict = ended_badly(&outcome).or_else(|| load.as_ref().and_then(raised)).unwrap_or_else(no_result);
                return (all(verdict, Some(&outcome)), seconds, None);
            }
            SessionEnd::Failed(TrustedError::Timeout(_)) => return (all(TestVerdict::Timeout, Some(&outcome)), seconds, None),
            SessionEnd::Failed(e) => return (all(trusted_failure(&e), Some(&outcome)), seconds, None),
        };
        if run.broken.is_some() {
            return (all(malformed(), Some(&outcome)), seconds, None);
        }
        if !run.reached {
            return (all(TestVerdict::NotRun, Some(&outcome)), seconds, Some(NEVER_CALLED.into()));
        }
        (self.test_verdicts(prepared, &run, &outcome, count), seconds, None)
    }

    /// The verdict of each test from what the trusted side saw. As the reference harnesses
    /// judge (a program passes when it completes and no assertion fails): an exception that
    /// escaped the tests (a candidate call outside any assertion raised, hung or killed its
    /// process; a pytest file's module-level assertion failed) fails every test not failed
    /// already, so answering a loop's first input and then crashing passes nothing; an
    /// assertion statement the completed tests never reached (the untaken branch of an
    /// EvalPlus helper) is no test; tests that completed without reaching any assertion fail.
    fn test_verdicts(&self, prepared: &PreparedTask, run: &TestRun, outcome: &Outcome, count: usize) -> Vec<TestResult> {
        let cut_short = ended_badly(outcome).unwrap_or_else(no_result);
        let named = |error: &str| match error {
            "AssertionError" => TestVerdict::WrongAnswer,
            "SandboxGone" | "Broken" => cut_short.clone(),
            "MemoryError" => TestVerdict::MemoryLimit,
            e => TestVerdict::RuntimeError { exception: e.to_owned() },
        };
        let classify = |ok: bool, error: Option<&str>| match (ok, error) {
            (true, _) => TestVerdict::Passed,
            (false, None) => TestVerdict::WrongAnswer,
            (false, Some(e)) => named(e),
        };
        let escaped = run.raised.as_deref().map(named);
        let mut by_index: Vec<Option<TestVerdict>> = vec![None; count];
        if matches!(prepared.task.spec, TestSpec::Pytest { .. }) {
            for (slot, f) in by_index.iter_mut().zip(&run.functions) {
                *slot = Some(classify(f.ok, f.error.as_deref()));
            }
            // Functions that never ran: the file failed to collect, or the run ended first.
            let missing = escaped.clone().unwrap_or_else(|| cut_short.clone());
            return by_index.into_iter().map(|v| result(v.unwrap_or_else(|| missing.clone()), outcome)).collect();
        }
        for a in &run.asserts {
            let Some(slot) = by_index.get_mut(a.index) else { continue };
            let verdict = classify(a.ok, a.error.as_deref());
            // A statement run several times (in a loop) passes only if every run passed.
            if slot.as_ref().is_none_or(TestVerdict::passed) {
                *slot = Some(verdict);
            }
        }
        let verdicts: Vec<TestVerdict> = match escaped {
            Some(verdict) => {
                by_index.into_iter().map(|v| v.filter(|v| !v.passed()).unwrap_or_else(|| verdict.clone())).collect()
            }
            None if by_index.iter().all(Option::is_none) => vec![TestVerdict::WrongAnswer; count],
            None => by_index.into_iter().flatten().collect(),
        };
        verdicts.into_iter().map(|v| result(v, outcome)).collect()
    }
}

fn without_task_error((tests, seconds): (Vec<TestResult>, f64)) -> (Vec<TestResult>, f64, Option<String>) {
    (tests, seconds, None)
}

/// The verdict implied by how the run ended, when it did not simply exit.
fn ended_badly(outcome: &Outcome) -> Option<TestVerdict> {
    match &outcome.end {
        End::Exited => None,
        End::TimedOut => Some(TestVerdict::Timeout),
        End::OutputLimit => Some(TestVerdict::OutputLimit),
        End::Crashed(what) => Some(TestVerdict::RuntimeError { exception: what.clone() }),
    }
}

/// The verdict for a result line that reports an exception, if it does.
fn raised(line: &Value) -> Option<TestVerdict> {
    let name = line.get("raise")?.as_str().unwrap_or("?");
    Some(match name {
        "MemoryError" => TestVerdict::MemoryLimit,
        _ => TestVerdict::RuntimeError { exception: name.to_owned() },
    })
}

fn no_result() -> TestVerdict {
    TestVerdict::RuntimeError { exception: "no_result".into() }
}

fn malformed() -> TestVerdict {
    TestVerdict::RuntimeError { exception: "malformed_result".into() }
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT_BYTES)]).into_owned()
}

fn result(verdict: TestVerdict, outcome: &Outcome) -> TestResult {
    TestResult { verdict, seconds: outcome.seconds, stdout: excerpt(&outcome.stdout), stderr: excerpt(&outcome.stderr) }
}

/// A failure of the candidate (what `fail_fast` stops at); a sandbox failure is not one.
fn failed(r: &TestResult) -> bool {
    !r.verdict.passed() && !matches!(r.verdict, TestVerdict::SandboxError { .. })
}

fn result_without_run(verdict: TestVerdict) -> TestResult {
    TestResult { verdict, seconds: 0.0, stdout: String::new(), stderr: String::new() }
}

fn sandbox_failure(e: &SandboxError) -> TestResult {
    result_without_run(TestVerdict::SandboxError { message: e.to_string() })
}
