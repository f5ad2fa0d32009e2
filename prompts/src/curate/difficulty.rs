//! Difficulty filtering by a model's pass rates (the per-task file `dllm-rl eval --per-task`
//! writes): keep tasks whose pass rate lies in [min, max]. Dream-Coder drops every prompt a
//! strong model solves in all of 8 samples (max < 1) and keeps the rest.

use std::collections::HashMap;

use dllm_verifier::Task;
use serde::Deserialize;

use super::{Curated, Decision};

/// One line of `dllm-rl eval --per-task`.
#[derive(Debug, Clone, Deserialize)]
pub struct PassRate {
    pub task_id: String,
    pub samples: usize,
    pub passed: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct DifficultyConfig {
    pub min: f64,
    pub max: f64,
    /// Keep tasks that have no pass rate (flagged) instead of dropping them.
    pub keep_unrated: bool,
}

impl Default for DifficultyConfig {
    fn default() -> Self {
        // Solved by some but not all samples is the informative band; the default drops only
        // what the model always solves, as Dream-Coder does.
        DifficultyConfig { min: 0.0, max: 0.999, keep_unrated: false }
    }
}

pub fn difficulty(tasks: Vec<Task>, rates: &HashMap<String, PassRate>, cfg: DifficultyConfig) -> Curated {
    const STEP: &str = "difficulty";
    let decisions = tasks
        .iter()
        .map(|task| match rates.get(&task.id) {
            None if cfg.keep_unrated => Decision::keep(task, STEP, "flagged: no pass rate", serde_json::Value::Null),
            None => Decision::drop(task, STEP, "no pass rate", serde_json::Value::Null),
            Some(r) => {
                let rate = r.passed as f64 / r.samples.max(1) as f64;
                let numbers = serde_json::json!({ "samples": r.samples, "passed": r.passed, "pass_rate": rate });
                if rate < cfg.min {
                    Decision::drop(task, STEP, format!("too hard: pass rate {rate:.3} < {}", cfg.min), numbers)
                } else if rate > cfg.max {
                    Decision::drop(task, STEP, format!("too easy: pass rate {rate:.3} > {}", cfg.max), numbers)
                } else {
                    Decision::keep(task, STEP, format!("pass rate {rate:.3} in range"), numbers)
                }
            }
        })
        .collect();
    Curated::from_decisions(tasks, decisions)
}

#[cfg(test)]
mod tests {
    use super::super::task;
    use super::*;

    #[test]
    fn keeps_the_informative_band() {
        let rate = |id: &str, passed| (id.to_string(), PassRate { task_id: id.into(), samples: 8, passed });
        let rates: HashMap<_, _> = [rate("a", 8), rate("b", 3), rate("c", 0)].into_iter().collect();
        let tasks = vec![task("a", "x", "p"), task("b", "x", "p"), task("c", "x", "p"), task("d", "x", "p")];
        let out = difficulty(tasks.clone(), &rates, DifficultyConfig::default());
        let kept: Vec<&str> = out.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["b", "c"]);
        assert!(out.decisions[0].reason.starts_with("too easy"));
        assert_eq!(out.decisions[3].reason, "no pass rate");
        let band = DifficultyConfig { min: 0.1, max: 0.9, keep_unrated: true };
        let kept: Vec<String> = difficulty(tasks, &rates, band).kept.into_iter().map(|t| t.id).collect();
        assert_eq!(kept, ["b", "d"]);
    }
}
