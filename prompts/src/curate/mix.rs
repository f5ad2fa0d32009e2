//! Mixing to target proportions: group tasks by source, kind, or both, and sample each group
//! without replacement (seeded) to its share of the total. Without a total, the largest total
//! the available tasks allow at exactly these proportions. A group that cannot fill its share
//! gives all it has, and the decisions say so.
//!
//! Shares are apportioned by largest remainder, so the quotas sum to the total (rounding each
//! share kept 6 of 5 at 0.5/0.5 and 9 of 10 at thirds), and every target group that has tasks
//! gets at least one when the total allows (rounding gave 0.01 of 10 nothing). A group's sample
//! is its tasks ranked by a hash of (seed, task id): it does not change when other groups are
//! added to the inputs.

use std::collections::BTreeMap;

use dllm_verifier::Task;
use super::{stable_hash, Curated, Decision};

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

/// Each target group's quota: the floors of its exact share of `total`, then one more to the
/// largest remainders (ties to the first name) until the quotas sum to `total`. A group with tasks
/// left at 0 then takes one from the largest quota, while some quota is above 1.
fn apportion(
    targets: &BTreeMap<String, f64>,
    groups: &BTreeMap<String, Vec<usize>>,
    total: usize,
) -> BTreeMap<String, usize> {
    let sum: f64 = targets.values().filter(|p| **p > 0.0).sum();
    if sum <= 0.0 {
        return BTreeMap::new();
    }
    let exact: Vec<(&String, f64)> = targets.iter().map(|(g, p)| (g, p.max(0.0) / sum * total as f64)).collect();
    let mut quotas: BTreeMap<String, usize> = exact.iter().map(|(g, x)| ((*g).clone(), x.floor() as usize)).collect();
    let mut by_remainder: Vec<&(&String, f64)> = exact.iter().collect();
    by_remainder.sort_by(|a, b| (b.1 - b.1.floor()).total_cmp(&(a.1 - a.1.floor())));
    let given: usize = quotas.values().sum();
    for (g, _) in by_remainder.into_iter().cycle().take(total.saturating_sub(given)) {
        *quotas.get_mut(*g).expect("invariant: every target has a quota") += 1;
    }
    let has_tasks = |g: &str| groups.get(g).is_some_and(|m| !m.is_empty());
    let starved: Vec<String> = quotas.iter().filter(|(g, q)| **q == 0 && has_tasks(g)).map(|(g, _)| g.clone()).collect();
    for g in starved {
        let largest = quotas.iter().filter(|(_, q)| **q > 1).max_by_key(|(d, q)| (**q, std::cmp::Reverse(*d)));
        let Some((donor, _)) = largest else { break };
        let donor = donor.clone();
        *quotas.get_mut(&donor).expect("invariant: the donor has a quota") -= 1;
        quotas.insert(g, 1);
    }
    quotas
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
    let quotas = apportion(targets, &groups, total);
    let mut chosen = vec![None; tasks.len()];
    for (g, members) in &groups {
        let quota = quotas.get(g).copied().unwrap_or(0);
        let mut order = members.clone();
        order.sort_by_cached_key(|&i| (stable_hash(format!("{seed}:{}", tasks[i].id).as_bytes()), i));
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

    #[test]
    fn quotas_sum_to_the_total_and_no_target_group_is_starved() {
        let kept = |targets: &[(&str, f64)], total| {
            let targets: BTreeMap<String, f64> = targets.iter().map(|(g, p)| (g.to_string(), *p)).collect();
            let out = mix(pool(), MixKey::Source, &targets, Some(total), 3);
            let count = |s: &str| out.kept.iter().filter(|t| t.source.as_deref() == Some(s)).count();
            (out.kept.len(), count("mbpp"), count("leetcode"), count("kodcode"))
        };
        // Rounding each share kept 6 of 5, 9 of 10, and nothing of a 1% target.
        assert_eq!(kept(&[("mbpp", 0.5), ("leetcode", 0.5)], 5).0, 5);
        assert_eq!(kept(&[("mbpp", 1.0), ("leetcode", 1.0), ("kodcode", 1.0)], 10).0, 10);
        assert_eq!(kept(&[("mbpp", 0.01), ("leetcode", 0.99)], 10), (10, 1, 9, 0));
        assert_eq!(kept(&[("mbpp", 0.5), ("leetcode", 0.3), ("kodcode", 0.2)], 7), (7, 4, 2, 1));
    }

    #[test]
    fn a_groups_sample_does_not_depend_on_other_groups() {
        let targets: BTreeMap<String, f64> = [("mbpp".into(), 0.5), ("leetcode".into(), 0.5)].into();
        let without: Vec<Task> = pool().into_iter().filter(|t| t.source.as_deref() != Some("kodcode")).collect();
        let ids = |tasks: Vec<Task>| mix(tasks, MixKey::Source, &targets, Some(20), 5).kept.into_iter().map(|t| t.id).collect::<Vec<_>>();
        // "kodcode" sorts before both targets: with one seeded stream its shuffle used up draws first.
        assert_eq!(ids(pool()), ids(without));
    }
}
