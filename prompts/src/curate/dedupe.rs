//! Exact and near-duplicate prompts. Exact: equal word sequences. Near: MinHash signatures of
//! word shingles, banded for locality-sensitive hashing; every candidate pair LSH proposes is
//! then checked with the true Jaccard similarity of the shingle sets, so the threshold is exact
//! and LSH only decides what gets compared. The first occurrence (input order) is kept; a
//! dropped task's decision names the task it duplicates and the similarity.

use std::collections::{HashMap, HashSet};

use dllm_verifier::Task;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::{stable_hash, words, Curated, Decision};

#[derive(Debug, Clone, Copy)]
pub struct DedupeConfig {
    /// Words per shingle.
    pub shingle: usize,
    /// Jaccard similarity at or above which two prompts are duplicates.
    pub threshold: f64,
    /// LSH bands x rows per band = MinHash permutations. 32 x 4 finds pairs at 0.8 with
    /// probability > 0.999 (1 - (1 - 0.8^4)^32).
    pub bands: usize,
    pub rows: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig { shingle: 5, threshold: 0.8, bands: 32, rows: 4 }
    }
}

fn shingles(text: &str, k: usize) -> HashSet<u64> {
    let w = words(text);
    if w.len() <= k {
        return std::iter::once(stable_hash(w.join(" ").as_bytes())).collect();
    }
    w.windows(k).map(|s| stable_hash(s.join(" ").as_bytes())).collect()
}

pub fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

const MERSENNE_61: u64 = (1 << 61) - 1;

fn signature(set: &HashSet<u64>, coeffs: &[(u64, u64)]) -> Vec<u64> {
    coeffs
        .iter()
        .map(|&(a, b)| {
            set.iter()
                .map(|&x| (((a as u128) * ((x % MERSENNE_61) as u128) + b as u128) % MERSENNE_61 as u128) as u64)
                .min()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

pub fn dedupe(tasks: Vec<Task>, cfg: DedupeConfig) -> Curated {
    const STEP: &str = "dedupe";
    let texts: Vec<String> = tasks.iter().map(|t| t.prompt.clone().unwrap_or_default()).collect();
    let sets: Vec<HashSet<u64>> = texts.iter().map(|t| shingles(t, cfg.shingle.max(1))).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x006d_696e_6861_7368);
    let coeffs: Vec<(u64, u64)> =
        (0..cfg.bands * cfg.rows).map(|_| (rng.next_u64() % (MERSENNE_61 - 1) + 1, rng.next_u64() % MERSENNE_61)).collect();
    let mut exact: HashMap<String, usize> = HashMap::new();
    let mut buckets: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
    let mut decisions = Vec::with_capacity(tasks.len());
    // Every other step refuses a task set with a repeated id (verdicts, rates and manifests are
    // keyed by id), so dedupe is where repeats (the same file imported twice) are dropped.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        if let Some(&first) = ids.get(task.id.as_str()) {
            decisions.push(Decision::drop(
                task,
                STEP,
                format!("duplicate id: {} again (first at position {})", task.id, first + 1),
                serde_json::json!({ "duplicate_of": task.id, "first_position": first + 1 }),
            ));
            continue;
        }
        ids.insert(&task.id, i);
        let normal = words(&texts[i]).join(" ");
        if let Some(&first) = exact.get(&normal) {
            decisions.push(Decision::drop(
                task,
                STEP,
                format!("exact duplicate: of {}", tasks[first].id),
                serde_json::json!({ "duplicate_of": tasks[first].id, "jaccard": 1.0 }),
            ));
            continue;
        }
        let sig = signature(&sets[i], &coeffs);
        let keys: Vec<(usize, u64)> =
            sig.chunks(cfg.rows.max(1)).enumerate().map(|(band, rows)| (band, stable_hash(format!("{rows:?}").as_bytes()))).collect();
        let mut candidates: Vec<usize> = keys.iter().filter_map(|k| buckets.get(k)).flatten().copied().collect();
        candidates.sort_unstable();
        candidates.dedup();
        let best = candidates.into_iter().map(|j| (j, jaccard(&sets[i], &sets[j]))).max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((j, sim)) if sim >= cfg.threshold => decisions.push(Decision::drop(
                task,
                STEP,
                format!("near duplicate: of {} (Jaccard {sim:.2})", tasks[j].id),
                serde_json::json!({ "duplicate_of": tasks[j].id, "jaccard": sim }),
            )),
            _ => {
                exact.insert(normal, i);
                for k in keys {
                    buckets.entry(k).or_default().push(i);
                }
                decisions.push(Decision::keep(task, STEP, "unique", serde_json::Value::Null));
            }
        }
    }
    Curated::from_decisions(tasks, decisions)
}

#[cfg(test)]
mod tests {
    use super::super::task;
    use super::*;

    #[test]
    fn planted_exact_and_near_duplicates_are_caught() {
        let base = "Given an array of integers nums and an integer target, return indices of the two numbers \
            such that they add up to target. You may assume that each input would have exactly one solution, and you \
            may not use the same element twice. You can return the answer in any order. The first line of the input \
            holds the number of elements, the second line the elements separated by spaces, and the third line the \
            target. Print the two indices separated by a space, smallest first, on a single line of output.";
        let near = base.replace("You may assume", "You can assume");
        let tasks = vec![
            task("a", "x", base),
            task("b", "x", "Write a program that reads a string and prints it reversed, one line per test case."),
            task("c", "y", &base.to_uppercase().replace('.', " !")),
            task("d", "y", &near),
            task("e", "y", "Given a matrix of integers, print the sum of each row on its own line."),
        ];
        let out = dedupe(tasks, DedupeConfig::default());
        let kept: Vec<&str> = out.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["a", "b", "e"]);
        assert!(out.decisions[2].reason.starts_with("exact duplicate: of a"));
        assert!(out.decisions[3].reason.starts_with("near duplicate: of a (Jaccard 0.8"), "{}", out.decisions[3].reason);
    }

    #[test]
    fn a_repeated_id_is_dropped_and_the_first_kept() {
        let tasks = vec![
            task("a", "x", "Print the sum of two integers read from one line of input."),
            task("b", "x", "Reverse a string and print it."),
            task("a", "x", "Something else entirely, about sorting a list of words by length."),
        ];
        let out = dedupe(tasks, DedupeConfig::default());
        let kept: Vec<&str> = out.kept.iter().map(|t| t.prompt.as_deref().unwrap_or_default()).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept[0].starts_with("Print the sum") && kept[1].starts_with("Reverse"), "{kept:?}");
        assert_eq!(out.decisions[2].reason, "duplicate id: a again (first at position 1)");
        assert_eq!(out.dropped_by_reason().get("duplicate id"), Some(&1));
    }

    #[test]
    fn different_problems_on_one_theme_are_kept() {
        let tasks = vec![
            task("a", "x", "Return the sum of the even numbers in a list of integers given as input."),
            task("b", "x", "Return the product of the odd numbers in a list of integers given as input."),
        ];
        assert_eq!(dedupe(tasks, DedupeConfig::default()).kept.len(), 2);
    }
}
