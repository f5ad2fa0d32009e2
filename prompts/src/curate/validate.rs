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
                Some(v) if v.sandbox_error => fail("sandbox error while validating: retry".into()),
                Some(v) if v.all_passed => Decision::keep(task, STEP, format!("reference passes all {} tests", v.tests.len()), numbers),
                Some(v) => fail(format!("reference fails: {}", v.summary())),
            }
        })
        .collect();
    Curated::from_decisions(tasks, decisions)
}
