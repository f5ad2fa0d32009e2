//! Each task's reference solution must pass its own tests in the sandbox, and the task must have
//! enough tests (default 1; DeepCoder asks for 5, as fewer let wrong solutions through, but MBPP
//! has 3 and CRUXEval 1, so 5 by default would drop those sets whole). Tasks without a reference
//! are dropped (nothing shows their tests can be passed) unless kept on purpose.

use dllm_verifier::{Completion, Task, Verifier};

use super::{test_count, Curated, Decision};

#[derive(Debug, Clone, Copy)]
pub struct ValidateConfig {
    pub min_tests: usize,
    /// Keep tasks that have no reference solution (flagged in the manifest).
    pub keep_unverified: bool,
    /// Keep failing tasks too, flagged, instead of dropping them.
    pub flag_only: bool,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig { min_tests: 1, keep_unverified: false, flag_only: false }
    }
}

pub fn validate(tasks: Vec<Task>, verifier: &Verifier, cfg: ValidateConfig, on_done: &(dyn Fn() + Sync)) -> Curated {
    const STEP: &str = "validate";
    let prepared = verifier.prepare_all(tasks.clone());
    let mut ready = Vec::new();
    let mut completions = Vec::new();
    let mut slot = vec![None; tasks.len()];
    let mut errors = vec![None; tasks.len()];
    for (i, (task, prepared)) in tasks.iter().zip(prepared).enumerate() {
        match (prepared, &task.reference) {
            // With its cause: the error's message names the task, its source says what is wrong.
            (Err(e), _) => {
                let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source());
                errors[i] = Some(chain.map(|e| e.to_string()).collect::<Vec<_>>().join(": "));
            }
            (Ok(p), Some(reference)) if test_count(task) >= cfg.min_tests => {
                slot[i] = Some(completions.len());
                completions.push(Completion { task: ready.len(), text: reference.clone() });
                ready.push(p);
            }
            _ => {}
        }
    }
    // A sandbox failure is judged once more by the verifier itself, on a fresh sandbox; one that
    // repeats while the sandbox judges other code fine is the reference's own failure.
    let verdicts = verifier.verify_batch(&ready, &completions, &|_| on_done());
    let decisions = tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let n = test_count(task);
            let numbers = serde_json::json!({ "tests": n });
            let fail = |reason: String| {
                if cfg.flag_only {
                    Decision::keep(task, STEP, format!("flagged: {reason}"), numbers.clone())
                } else {
                    Decision::drop(task, STEP, reason, numbers.clone())
                }
            };
            if let Some(e) = &errors[i] {
                return fail(format!("tests cannot run: {e}"));
            }
            if n < cfg.min_tests {
                return fail(format!("too few tests: {n} < {}", cfg.min_tests));
            }
            match slot[i].map(|s| &verdicts[s]) {
                None if cfg.keep_unverified => Decision::keep(task, STEP, "unverified: no reference solution", numbers),
                None => fail("no reference solution to validate".into()),
                Some(v) if v.sandbox_error => fail("sandbox error while validating, twice: retry".into()),
                Some(v) if v.all_passed => Decision::keep(task, STEP, format!("reference passes all {} tests", v.tests.len()), numbers),
                Some(v) if v.task_error.is_some() => {
                    fail(format!("tests cannot judge: {}", v.task_error.as_deref().unwrap_or_default()))
                }
                Some(v) if v.sandbox_failure_charged => fail(format!("reference breaks the sandbox: {}", first_failure(v))),
                Some(v) => fail(format!("reference fails: {}", v.summary())),
            }
        })
        .collect();
    Curated::from_decisions(tasks, decisions)
}

fn first_failure(v: &dllm_verifier::TaskVerdict) -> String {
    v.tests.iter().find(|t| !t.verdict.passed()).map_or_else(String::new, |t| format!("{:?}", t.verdict))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use dllm_verifier::sandbox::{Conversation, End, Job, Outcome};
    use dllm_verifier::{Sandbox, SandboxError};

    use super::*;

    /// Fails its first `failures` runs, then answers as a sandbox does: `f` returns 2 when the
    /// tests call it, and a stdio program (the verifier's check that the sandbox works) prints
    /// what `print(int(input()) + 1)` prints for 20.
    struct Flaky {
        failures: usize,
        runs: AtomicUsize,
    }

    impl Flaky {
        fn failed(&self) -> bool {
            self.runs.fetch_add(1, Ordering::SeqCst) < self.failures
        }
    }

    impl Sandbox for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        fn run(&self, _: &Job) -> Result<Outcome, SandboxError> {
            if self.failed() {
                return Err(SandboxError::Protocol("fork failed".into()));
            }
            let results = vec![serde_json::json!({"done": true})];
            Ok(Outcome { stdout: b"21\n".to_vec(), stderr: Vec::new(), results, malformed: false, end: End::Exited, seconds: 0.0 })
        }

        fn converse(&self, _: &Job, mut c: Box<dyn Conversation>) -> (Result<Outcome, SandboxError>, Box<dyn Conversation>) {
            if self.failed() {
                return (Err(SandboxError::Protocol("fork failed".into())), c);
            }
            let loaded = br#"{"loaded":true,"names":[["f",{"$handle":0}]],"handles":[[0,{"kind":"callable","name":"f"}]]}"#;
            let mut request = c.answer(loaded);
            while let Some(r) = request {
                let seq: serde_json::Value = serde_json::from_slice(&r).unwrap();
                request = c.answer(format!(r#"{{"seq":{},"value":2}}"#, seq["seq"]).as_bytes());
            }
            let outcome = Outcome { stdout: Vec::new(), stderr: Vec::new(), results: Vec::new(), malformed: false, end: End::Exited, seconds: 0.0 };
            (Ok(outcome), c)
        }
    }

    fn validated(failures: usize) -> Curated {
        let verifier = Verifier::with_sandbox(Arc::new(Flaky { failures, runs: AtomicUsize::new(0) }), 1).unwrap();
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": "t", "kind": "assert", "entry_points": ["f"], "test_code": "assert f(1) == 2\n",
            "reference": "def f(x):\n    return 2 * x\n"
        }))
        .unwrap();
        validate(vec![task], &verifier, ValidateConfig::default(), &|| {})
    }

    #[test]
    fn a_sandbox_failure_is_judged_again_before_the_task_is_dropped() {
        assert_eq!(validated(1).kept.len(), 1, "one failure, then the reference passes: kept");
        // Twice, while the sandbox judges a known program fine: the reference's own failure.
        let twice = validated(2);
        assert!(twice.kept.is_empty());
        assert!(twice.decisions[0].reason.contains("reference breaks the sandbox"), "{:?}", twice.decisions[0]);
        // Three times: the known program failed too, so the sandbox is what is broken.
        let broken = validated(3);
        assert!(broken.kept.is_empty());
        assert!(broken.decisions[0].reason.contains("sandbox error while validating, twice"), "{:?}", broken.decisions[0]);
    }
}
