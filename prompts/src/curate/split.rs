//! Splits by hashing each task id with a seed: stable (a task stays in its part when others
//! are added or removed) and reproducible.

use std::collections::BTreeMap;

use dllm_verifier::Task;

use super::{stable_hash, Decision};

/// `parts`: name → fraction (normalised). Returns the tasks of each part and one decision per
/// task.
pub fn split(tasks: Vec<Task>, parts: &[(String, f64)], seed: u64) -> (BTreeMap<String, Vec<Task>>, Vec<Decision>) {
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let mut out: BTreeMap<String, Vec<Task>> = parts.iter().map(|p| (p.0.clone(), Vec::new())).collect();
    let mut decisions = Vec::with_capacity(tasks.len());
    for task in tasks {
        let u = (stable_hash(format!("{seed}:{}", task.id).as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
        let mut edge = 0.0;
        let part = parts
            .iter()
            .find(|(_, f)| {
                edge += f / total;
                u < edge
            })
            .or(parts.last())
            .map(|p| p.0.clone())
            .unwrap_or_default();
        decisions.push(Decision::keep(&task, "split", format!("part {part}"), serde_json::json!({ "part": part })));
        out.entry(part).or_default().push(task);
    }
    (out, decisions)
}

#[cfg(test)]
mod tests {
    use super::super::task;
    use super::*;

    #[test]
    fn fractions_are_met_and_membership_is_stable() {
        let tasks: Vec<Task> = (0..2000).map(|i| task(&format!("t{i}"), "x", "p")).collect();
        let parts = vec![("train".to_string(), 0.9), ("test".to_string(), 0.1)];
        let (out, decisions) = split(tasks.clone(), &parts, 3);
        assert_eq!(decisions.len(), 2000);
        let test = out["test"].len();
        assert!((150..250).contains(&test), "{test}");
        // Removing half the tasks moves nobody.
        let (half, _) = split(tasks[..1000].to_vec(), &parts, 3);
        assert!(half["test"].iter().all(|t| out["test"].iter().any(|u| u.id == t.id)));
    }
}
