//! Decontamination: a training task whose prompt shares an n-gram of words (default 13, the
//! GPT-3 / Llama recipe) with any evaluation problem is dropped, naming the problem and the
//! number of shared n-grams. Prompts shorter than n words are compared whole.
//!
//! Boilerplate is not evidence: an n-gram found in more than `common` training prompts (the
//! judge's "You can output the answer in any case (for example, the strings yEs, yes ..." of
//! every Codeforces YES/NO problem) is ignored, else every such problem would match every other.

use std::collections::HashMap;

use dllm_verifier::Task;

use super::{stable_hash, words, Curated, Decision};

#[derive(Debug, Clone, Copy)]
pub struct DecontaminateConfig {
    pub ngram: usize,
    /// Shared n-grams needed to call a task contaminated.
    pub min_overlap: usize,
    /// n-grams found in more training prompts than this are boilerplate and ignored.
    pub common: usize,
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        DecontaminateConfig { ngram: 13, min_overlap: 1, common: 3 }
    }
}

fn grams(text: &str, n: usize) -> Vec<u64> {
    let w = words(text);
    if w.len() < n {
        return vec![stable_hash(format!("whole:{}", w.join(" ")).as_bytes())];
    }
    w.windows(n).map(|g| stable_hash(g.join(" ").as_bytes())).collect()
}

/// `against`: (id, text) of the evaluation problems.
pub fn decontaminate(tasks: Vec<Task>, against: &[(String, String)], cfg: DecontaminateConfig) -> Curated {
    const STEP: &str = "decontaminate";
    let n = cfg.ngram.max(1);
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (i, (_, text)) in against.iter().enumerate() {
        for g in grams(text, n) {
            index.entry(g).or_insert(i);
        }
        // Short evaluation texts are also matched whole against short training prompts.
        index.entry(stable_hash(format!("whole:{}", words(text).join(" ")).as_bytes())).or_insert(i);
    }
    let task_grams: Vec<Vec<u64>> = tasks.iter().map(|t| grams(t.prompt.as_deref().unwrap_or_default(), n)).collect();
    let mut frequency: HashMap<u64, usize> = HashMap::new();
    for g in &task_grams {
        let unique: std::collections::HashSet<&u64> = g.iter().collect();
        for &h in unique {
            *frequency.entry(h).or_default() += 1;
        }
    }
    let decisions = tasks
        .iter()
        .zip(&task_grams)
        .map(|(task, task_grams)| {
            let mut hits: HashMap<usize, usize> = HashMap::new();
            for g in task_grams.iter().copied().filter(|g| frequency.get(g).copied().unwrap_or(0) <= cfg.common) {
                if let Some(&e) = index.get(&g) {
                    *hits.entry(e).or_default() += 1;
                }
            }
            match hits.into_iter().max_by_key(|&(e, c)| (c, std::cmp::Reverse(e))) {
                Some((e, count)) if count >= cfg.min_overlap => Decision::drop(
                    task,
                    STEP,
                    format!("contaminated: shares {count} {n}-gram(s) with evaluation problem {}", against[e].0),
                    serde_json::json!({ "against": against[e].0, "shared_ngrams": count }),
                ),
                _ => Decision::keep(task, STEP, "no overlap", serde_json::Value::Null),
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
    fn a_planted_copy_of_an_evaluation_problem_is_caught() {
        let eval_text = "Write a function to find the shared elements from the given two lists, returning them as a set, in any order you like.";
        let against = vec![("mbpp/2".to_string(), eval_text.to_string()), ("he/0".to_string(), "Check if two numbers are close.".to_string())];
        let tasks = vec![
            task("train/1", "x", &format!("Here is a task. {eval_text} Good luck!")),
            task("train/2", "x", "Write a function that reverses the words in a sentence and returns the new sentence as a string."),
            task("train/3", "x", "check IF two numbers are close"),
        ];
        let out = decontaminate(tasks, &against, DecontaminateConfig::default());
        let kept: Vec<&str> = out.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["train/2"]);
        assert!(out.decisions[0].reason.contains("with evaluation problem mbpp/2"), "{}", out.decisions[0].reason);
        assert!(out.decisions[2].reason.contains("he/0"));
        let boilerplate = "You can output the answer in any case, for example the strings yEs, yes, Yes and YES will be recognized as a positive answer.";
        let against = vec![("cf/1".to_string(), format!("Sort three cards. {boilerplate}"))];
        let tasks: Vec<Task> = (0..5).map(|i| task(&format!("t{i}"), "x", &format!("Problem number {i} is different. {boilerplate}"))).collect();
        let common = decontaminate(tasks, &against, DecontaminateConfig::default());
        assert_eq!(common.kept.len(), 5, "boilerplate shared by many training prompts is not contamination");
    }
}
