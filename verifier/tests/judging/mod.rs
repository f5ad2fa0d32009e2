//! Shared by the test binaries that judge completions on the real sandboxes, on both backends:
//! one verifier per backend and binary, tasks written as JSON, codes put in fenced blocks.

#![allow(dead_code)]

use std::sync::OnceLock;

use dllm_verifier::{Backend, Completion, TaskVerdict, Verifier};
use serde_json::{json, Value};

pub fn verifier(backend: Backend) -> &'static Verifier {
    static NATIVE: OnceLock<Verifier> = OnceLock::new();
    static WASM: OnceLock<Verifier> = OnceLock::new();
    let cell = if backend == Backend::Native { &NATIVE } else { &WASM };
    cell.get_or_init(|| Verifier::new(backend, 2).expect("sandbox starts"))
}

/// Judges each code on the task; one verdict per code.
pub fn judge(backend: Backend, task: Value, codes: &[&str]) -> Vec<TaskVerdict> {
    judge_on(verifier(backend), task, codes)
}

/// [`judge`] on a verifier of the caller's.
pub fn judge_on(v: &Verifier, task: Value, codes: &[&str]) -> Vec<TaskVerdict> {
    let tasks = vec![v.prepare(serde_json::from_value(task).expect("a valid task")).expect("task prepares")];
    let completions: Vec<Completion> =
        codes.iter().map(|c| Completion { task: 0, text: format!("```python\n{c}\n```") }).collect();
    v.verify_batch(&tasks, &completions, &|_| {})
}

/// The first code is honest and must pass; every other one is a hack and must pass no test.
pub fn honest_then_hacks(backend: Backend, family: &str, task: Value, codes: &[&str]) {
    let verdicts = judge(backend, task, codes);
    assert!(verdicts[0].all_passed, "{backend:?} {family}: the honest solution fails: {:?}", verdicts[0]);
    for (i, v) in verdicts.iter().enumerate().skip(1) {
        let passed = v.tests.iter().filter(|t| t.verdict.passed()).count();
        assert_eq!(passed, 0, "{backend:?} {family}: hack {i} passed {passed} test(s): {v:?}");
        assert!(!v.sandbox_error, "{backend:?} {family}: hack {i} broke the sandbox: {v:?}");
    }
}

/// Each code is honest and must pass every test, with no task or sandbox error.
pub fn all_pass(backend: Backend, family: &str, task: Value, codes: &[&str]) {
    for (i, v) in judge(backend, task, codes).iter().enumerate() {
        assert!(v.all_passed && v.task_error.is_none() && !v.sandbox_error, "{backend:?} {family}: code {i} fails: {v:?}");
    }
}

pub fn pytest(code: &str) -> Value {
    json!({"id": "t", "kind": "pytest", "test_code": code, "limits": {"time_s": 2.0}})
}

pub fn asserts(entry: &str, setup: &str, code: &str) -> Value {
    json!({"id": "t", "kind": "assert", "entry_points": [entry], "test_setup": setup, "test_code": code, "limits": {"time_s": 2.0}})
}
