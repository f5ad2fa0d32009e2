//! Mixing to target proportions: group tasks by source, kind, or both, and sample each group
//! without replacement (seeded) to its share of the total. Without a total, the largest total
//! the available tasks allow at exactly these proportions. A group that cannot fill its share
//! gives all it has, and the decisions say so.

use std::collections::BTreeMap;

use dllm_verifier::Task;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::{Curated, Decision};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixKey {
    Source,
    Kind,
    SourceKind,
}

impl MixKey {
    pub fn of(self, task: &Task) -> String {
        let source = task.source.clone().unwrap_or_else(|| "-".into());
        match self {
            MixKey::Source => source,
            MixKey::Kind => task.kind().into(),
            MixKey::SourceKind => format!("{source}/{}", task.kind()),
        }
    }
}

/// `targets`: group name → proportion (normalised to sum 1).
pub fn mix(tasks: Vec<Task>, key: MixKey, targets: &BTreeMap<String, f64>, total: Option<usize>, seed: u64) -> Curated {
    const STEP: &str = "mix";
    let sum: f64 = targets.values().sum();
    let share = |g: &str| targets.get(g).map_or(0.0, |p| p / sum.max(f64::MIN_POSITIVE));
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        groups.entry(key.of(t)).or_default().push(i);
    }
    let total = total.unwrap_or_else(|| {
        targets
            .keys()
            .filter(|g| share(g) > 0.0)
            .map(|g| (groups.get(g).map_or(0, Vec::len) as f64 / share(g)).floor() as usize)
            .min()
            .unwrap_or(0)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = vec![None; tasks.len()];
    for (g, members) in &groups {
        let quota = (share(g) * total as f64).round() as usize;
        let mut order = members.clone();
        // Fisher-Yates with the seeded stream.
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for (rank, &i) in order.iter().enumerate() {
            chosen[i] = Some((g.clone(), rank < quota, quota, members.len()));
        }
    }
    let decisions = tasks
        .iter()
        .zip(chosen)
        .map(|(task, c)| {
            let Some((g, kept, quota, available)) = c else { unreachable!("every task is in a group") };
            let numbers = serde_json::json!({ "group": g, "quota": quota, "available": available });
            if !targets.contains_key(&g) {
                Decision::drop(task, STEP, format!("not in the mix: group {g}"), numbers)
            } else if kept {
                let note = if available < quota { format!(" (short: {available} of {quota})") } else { String::new() };
                Decision::keep(task, STEP, format!("sampled for {g}{note}"), numbers)
            } else {
                Decision::drop(task, STEP, format!("over quota: {g} keeps {quota} of {available}"), numbers)
            }
        })
        .collect();
    Curated::from_decisions(tasks, decisions)
}

#[cfg(test)]
mod tests {
    use super::super::task;
    use super::*;

    fn pool() -> Vec<Task> {
        let mut tasks = Vec::new();
        for i in 0..60 {
            tasks.push(task(&format!("a{i}"), "mbpp", "p"));
        }
        for i in 0..30 {
            tasks.push(task(&format!("b{i}"), "leetcode", "p"));
        }
        for i in 0..10 {
            tasks.push(task(&format!("c{i}"), "kodcode", "p"));
        }
        tasks
    }

    #[test]
    fn hits_the_target_proportions_and_replays() {
        let targets: BTreeMap<String, f64> = [("mbpp".into(), 0.5), ("leetcode".into(), 0.25), ("kodcode".into(), 0.25)].into();
        let out = mix(pool(), MixKey::Source, &targets, None, 7);
        // Kodcode limits the total: 10 / 0.25 = 40 → 20 / 10 / 10.
        let count = |s: &str| out.kept.iter().filter(|t| t.source.as_deref() == Some(s)).count();
        assert_eq!((count("mbpp"), count("leetcode"), count("kodcode")), (20, 10, 10));
        let again = mix(pool(), MixKey::Source, &targets, None, 7);
        assert_eq!(again.kept.iter().map(|t| &t.id).collect::<Vec<_>>(), out.kept.iter().map(|t| &t.id).collect::<Vec<_>>());
        let other = mix(pool(), MixKey::Source, &targets, None, 8);
        assert_ne!(other.kept.iter().map(|t| &t.id).collect::<Vec<_>>(), out.kept.iter().map(|t| &t.id).collect::<Vec<_>>());
    }

    #[test]
    fn a_short_group_gives_all_it_has_and_says_so() {
        let targets: BTreeMap<String, f64> = [("mbpp".into(), 0.5), ("kodcode".into(), 0.5)].into();
        let out = mix(pool(), MixKey::Source, &targets, Some(40), 1);
        let kod: Vec<&Decision> = out.decisions.iter().filter(|d| d.task_id.starts_with('c')).collect();
        assert!(kod.iter().all(|d| d.kept && d.reason.contains("short: 10 of 20")));
        assert!(out.decisions.iter().filter(|d| d.task_id.starts_with('b')).all(|d| !d.kept && d.reason.contains("not in the mix")));
        assert_eq!(out.kept.len(), 30);
    }
}
