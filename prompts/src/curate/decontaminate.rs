//! Decontamination: a training task whose prompt shares an n-gram of words (default 13, the
//! GPT-3 / Llama recipe) with any evaluation problem is dropped, naming the problem and the
//! number of shared n-grams. A text shorter than n words (many MBPP statements are nine or ten)
//! has no n-gram: it is looked for whole, as a run of words, inside the other side's texts (a short
//! evaluation statement inside a training prompt that adds its tests, or a short training prompt
//! inside a long evaluation text).
//!
//! Boilerplate is not evidence: an n-gram found in more than `common` evaluation texts, or in
//! more than `common` training prompts (the judge's "You can output the answer in any case (for
//! example, the strings yEs, yes ..." of every Codeforces YES/NO problem), is ignored, else every
//! such problem would match every other. Frequency in the training set never excuses a verbatim
//! copy, though: a training prompt holding every n-gram of an evaluation problem is dropped however
//! many other training prompts hold them too (an evaluation problem copied into four training
//! prompts is four times the contamination, not boilerplate).

use std::collections::{HashMap, HashSet};

use dllm_verifier::Task;

use super::{stable_hash, words, Curated, Decision};

#[derive(Debug, Clone, Copy)]
pub struct DecontaminateConfig {
    pub ngram: usize,
    /// Shared n-grams needed to call a task contaminated.
    pub min_overlap: usize,
    /// n-grams found in more evaluation texts (distinct wordings) or more training prompts than this
    /// are boilerplate and ignored, except that a verbatim copy of an evaluation problem is always caught.
    pub common: usize,
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        DecontaminateConfig { ngram: 13, min_overlap: 1, common: 3 }
    }
}

/// The n-grams of a text's words, hashed; a text shorter than n words is one "whole" gram.
fn grams(w: &[String], n: usize) -> Vec<u64> {
    if w.len() < n {
        return vec![stable_hash(format!("whole:{}", w.join(" ")).as_bytes())];
    }
    w.windows(n).map(|g| stable_hash(g.join(" ").as_bytes())).collect()
}

/// Short texts of fewer words than this are compared only for equality: a run of two or three
/// words ("sort the list") is found in too many unrelated problems to be evidence of a copy.
const MIN_CONTAINED: usize = 4;

/// A run of words, from the hashes of its words: every window of every short length is hashed,
/// so no window's words are joined into a string.
fn run_hash(words: &[u64]) -> u64 {
    words.iter().fold(words.len() as u64, |h, &w| stable_hash(&(h ^ w).to_le_bytes()))
}

fn word_hashes(words: &[String]) -> Vec<u64> {
    words.iter().map(|w| stable_hash(w.as_bytes())).collect()
}

/// Short texts (`MIN_CONTAINED..n` words) of one side, looked for as runs of words in the other.
struct ShortTexts {
    /// (length in words, hash of the words) → the texts with those words.
    texts: HashMap<u64, Vec<usize>>,
    lengths: std::collections::BTreeSet<usize>,
}

impl ShortTexts {
    fn new<'a>(texts: impl IntoIterator<Item = &'a [u64]>, n: usize) -> Self {
        let mut short = ShortTexts { texts: HashMap::new(), lengths: Default::default() };
        for (i, w) in texts.into_iter().enumerate() {
            if (MIN_CONTAINED..n).contains(&w.len()) {
                short.texts.entry(run_hash(w)).or_default().push(i);
                short.lengths.insert(w.len());
            }
        }
        short
    }

    /// The short texts found as runs of words in `haystack`, shortest runs first.
    fn found_in<'h>(&'h self, haystack: &'h [u64]) -> impl Iterator<Item = usize> + 'h {
        let runs = self.lengths.iter().flat_map(move |&l| haystack.windows(l));
        runs.filter_map(|r| self.texts.get(&run_hash(r))).flatten().copied()
    }
}

/// `against`: (id, text) of the evaluation problems.
pub fn decontaminate(tasks: Vec<Task>, against: &[(String, String)], cfg: DecontaminateConfig) -> Curated {
    const STEP: &str = "decontaminate";
    let n = cfg.ngram.max(1);
    // Each text's words once: NFKC and the word split are the costly part.
    let eval_text_words: Vec<Vec<String>> = against.iter().map(|(_, t)| words(t)).collect();
    let task_text_words: Vec<Vec<String>> = tasks.iter().map(|t| words(t.prompt.as_deref().unwrap_or_default())).collect();
    let eval_grams: Vec<Vec<u64>> = eval_text_words.iter().map(|w| grams(w, n)).collect();
    // n-gram → the evaluation problems holding it (each once, in order).
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, (w, own)) in eval_text_words.iter().zip(&eval_grams).enumerate() {
        // Short evaluation texts are also matched whole against short training prompts.
        let whole = stable_hash(format!("whole:{}", w.join(" ")).as_bytes());
        for &g in own.iter().chain([&whole]) {
            let holders = index.entry(g).or_default();
            if holders.last() != Some(&i) {
                holders.push(i);
            }
        }
    }
    // Boilerplate of the evaluation set: an n-gram many evaluation texts share says nothing about
    // which one a training prompt copies. Texts are counted once per wording, so a problem that
    // several evaluation sets carry verbatim (HumanEval and its variants) is not boilerplate.
    let wording: Vec<u64> = eval_text_words.iter().map(|w| stable_hash(w.join(" ").as_bytes())).collect();
    index.retain(|_, holders| holders.iter().map(|&e| wording[e]).collect::<HashSet<u64>>().len() <= cfg.common);
    // How many (non-boilerplate) n-grams each evaluation problem has: a training prompt holding
    // all of them is a verbatim copy.
    let own_count: Vec<usize> = eval_grams
        .iter()
        .enumerate()
        .map(|(i, own)| own.iter().collect::<HashSet<_>>().into_iter().filter(|g| index.get(g).is_some_and(|h| h.contains(&i))).count())
        .collect();
    let task_grams: Vec<HashSet<u64>> = task_text_words.iter().map(|w| grams(w, n).into_iter().collect()).collect();
    let mut frequency: HashMap<u64, usize> = HashMap::new();
    for g in &task_grams {
        for &h in g {
            *frequency.entry(h).or_default() += 1;
        }
    }
    let eval_words: Vec<Vec<u64>> = eval_text_words.iter().map(|w| word_hashes(w)).collect();
    let task_words: Vec<Vec<u64>> = task_text_words.iter().map(|w| word_hashes(w)).collect();
    let short_evals = ShortTexts::new(eval_words.iter().map(Vec::as_slice), n);
    let short_tasks = ShortTexts::new(task_words.iter().map(Vec::as_slice), n);
    // Training prompt → the first evaluation text that contains it whole.
    let mut contained_in: HashMap<usize, usize> = HashMap::new();
    for (e, w) in eval_words.iter().enumerate() {
        for t in short_tasks.found_in(w) {
            contained_in.entry(t).or_insert(e);
        }
    }
    let decisions = tasks
        .iter()
        .zip(&task_grams)
        .enumerate()
        .map(|(t, (task, task_grams))| {
            // Per evaluation problem: (shared n-grams rare in the training set, all shared n-grams).
            let mut hits: HashMap<usize, (usize, usize)> = HashMap::new();
            for g in task_grams {
                let rare = frequency.get(g).copied().unwrap_or(0) <= cfg.common;
                for &e in index.get(g).into_iter().flatten() {
                    let h = hits.entry(e).or_default();
                    h.0 += rare as usize;
                    h.1 += 1;
                }
            }
            let evidence = |e: usize, (rare, all): (usize, usize)| {
                let copy = own_count[e] > 0 && all >= own_count[e];
                if rare >= cfg.min_overlap || (copy && all >= cfg.min_overlap) { all } else { 0 }
            };
            let best = hits.into_iter().map(|(e, h)| (e, evidence(e, h))).max_by_key(|&(e, c)| (c, std::cmp::Reverse(e)));
            match best {
                Some((e, count)) if count > 0 => Decision::drop(
                    task,
                    STEP,
                    format!("contaminated: shares {count} {n}-gram(s) with evaluation problem {}", against[e].0),
                    serde_json::json!({ "against": against[e].0, "shared_ngrams": count }),
                ),
                _ => {
                    if let Some(e) = short_evals.found_in(&task_words[t]).min() {
                        let reason = format!("contaminated: contains evaluation problem {} whole", against[e].0);
                        Decision::drop(task, STEP, reason, serde_json::json!({ "against": against[e].0, "contains": true }))
                    } else if let Some(&e) = contained_in.get(&t) {
                        let reason = format!("contaminated: contained whole in evaluation problem {}", against[e].0);
                        Decision::drop(task, STEP, reason, serde_json::json!({ "against": against[e].0, "contained": true }))
                    } else {
                        Decision::keep(task, STEP, "no overlap", serde_json::Value::Null)
                    }
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

    #[test]
    fn an_evaluation_problem_copied_into_many_training_prompts_is_still_caught() {
        // The reviewer's tr_copies.jsonl: one evaluation problem pasted into 3 and into 5 training
        // prompts; frequency in the training set made the 5 copies look like boilerplate.
        let eval_text = "You are given an array of n integers a_1 ... a_n. In one operation you may choose two adjacent \
                         elements and replace both with their greatest common divisor. Find the minimum number of \
                         operations needed to make every element equal to one, or print -1 if impossible.";
        let against = vec![("lcb/1".to_string(), eval_text.to_string())];
        for copies in [3, 5] {
            let tasks: Vec<Task> =
                (0..copies).map(|i| task(&format!("src{i}/x"), "train", &format!("Problem {i}. {eval_text}"))).collect();
            let out = decontaminate(tasks, &against, DecontaminateConfig::default());
            assert!(out.kept.is_empty(), "{copies} copies: {:?}", out.decisions);
            assert!(out.decisions.iter().all(|d| d.reason.contains("lcb/1")));
        }
        // An n-gram shared by many evaluation texts is boilerplate even with one training prompt.
        let boilerplate = "You can output the answer in any case, for example the strings yEs, yes, Yes and YES will be recognized as a positive answer.";
        let against: Vec<(String, String)> =
            (0..5).map(|i| (format!("cf/{i}"), format!("Evaluation problem {i} about cards. {boilerplate}"))).collect();
        let tasks = vec![task("t0", "x", &format!("A training problem about graphs. {boilerplate}"))];
        assert_eq!(decontaminate(tasks, &against, DecontaminateConfig::default()).kept.len(), 1);
        // ... but one problem carried verbatim by several evaluation sets is not.
        let against: Vec<(String, String)> = (0..5).map(|i| (format!("set{i}/7"), eval_text.to_string())).collect();
        let tasks = vec![task("t0", "x", eval_text)];
        assert!(decontaminate(tasks, &against, DecontaminateConfig::default()).kept.is_empty());
    }

    #[test]
    fn a_short_text_is_found_inside_a_longer_one() {
        // The reviewer's ev_mbpp_raw.jsonl vs tr_short.jsonl: MBPP statements of ten words matched
        // only an exactly equal training prompt, not one that adds the tests or a sentence.
        let against = vec![
            ("mbpp/17".to_string(), "Write a function to find the perimeter of a square.".to_string()),
            ("mbpp/82".to_string(), "Write a function to find the volume of a sphere.".to_string()),
            ("lcb/9".to_string(), "Given a tree with n nodes, count the pairs of nodes whose path length is even and \
                                   print the count modulo a large prime."
                .to_string()),
        ];
        let tasks = vec![
            task("tr/1", "x", "Write a function to find the volume of a sphere.\nYour code should pass these tests:\n\nassert volume_sphere(10)==4188.790204786391\n"),
            task("tr/2", "x", "Write a function to find the perimeter of a square. Return an integer."),
            task("tr/3", "x", "Write a function that sorts a list of words by their length and returns it."),
            task("tr/4", "x", "Count the pairs of nodes whose path length is even"),
            task("tr/5", "x", "Find the perimeter"),
        ];
        let out = decontaminate(tasks, &against, DecontaminateConfig::default());
        let kept: Vec<&str> = out.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["tr/3", "tr/5"], "{:?}", out.decisions);
        assert!(out.decisions[0].reason.contains("contains evaluation problem mbpp/82"), "{}", out.decisions[0].reason);
        assert!(out.decisions[3].reason.contains("contained whole in evaluation problem lcb/9"), "{}", out.decisions[3].reason);
    }
}
