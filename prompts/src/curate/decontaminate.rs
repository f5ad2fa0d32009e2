//! Decontamination: a training task whose prompt shares an n-gram of words (default 13, the
//! GPT-3 / Llama recipe) with any evaluation problem is dropped, naming the problem and the
//! number of shared n-grams. Prompts shorter than n words are compared whole.

use std::collections::HashMap;

use dllm_verifier::Task;

use super::{stable_hash, words, Curated, Decision};

#[derive(Debug, Clone, Copy)]
pub struct DecontaminateConfig {
    pub ngram: usize,
    /// Shared n-grams needed to call a task contaminated.
    pub min_overlap: usize,
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        DecontaminateConfig { ngram: 13, min_overlap: 1 }
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
    let decisions = tasks
        .iter()
        .map(|task| {
            let mut hits: HashMap<usize, usize> = HashMap::new();
            for g in grams(task.prompt.as_deref().unwrap_or_default(), n) {
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
    }
}
