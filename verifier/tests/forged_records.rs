//! What the judge makes of result lines no honest harness writes, fed by a stand-in sandbox
//! that returns exactly the lines under test.

use std::sync::Arc;

use dllm_verifier::sandbox::{End, Job, Outcome};
use dllm_verifier::{Completion, Sandbox, SandboxError, Verifier};
use serde_json::{json, Value};

struct Replies(Vec<Value>);

impl Sandbox for Replies {
    fn name(&self) -> &'static str {
        "replies"
    }

    fn run(&self, _: &Job) -> Result<Outcome, SandboxError> {
        let results = self.0.clone();
        Ok(Outcome { stdout: Vec::new(), stderr: Vec::new(), results, malformed: false, end: End::Exited, seconds: 0.0 })
    }
}

fn judge(results: Vec<Value>) -> dllm_verifier::TaskVerdict {
    let verifier = Verifier::with_sandbox(Arc::new(Replies(results)), 1).unwrap();
    let task = json!({"id": "twice", "kind": "assert", "entry_points": ["f"], "test_code": "assert f(1) == 2\n"});
    let tasks = vec![verifier.prepare(serde_json::from_value(task).unwrap()).unwrap()];
    let completion = Completion { task: 0, text: "def f(x):\n    return 2 * x\n".into() };
    verifier.verify_batch(&tasks, &[completion], &|_| {}).remove(0)
}

#[test]
fn a_record_for_a_site_the_rewrite_does_not_have_is_forged() {
    let honest = vec![json!({"site": 0, "n": 0, "value": 2})];
    assert!(judge(honest.clone()).all_passed, "the stand-in's honest lines pass");
    let mut forged = honest;
    forged.push(json!({"site": 7, "n": 0, "value": 1}));
    let v = judge(forged);
    assert!(!v.all_passed, "{v:?}");
    assert_eq!(v.summary(), "runtime_error", "{v:?}");
}
