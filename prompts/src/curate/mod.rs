//! Curation: each step reads a task set and writes the tasks it keeps plus a manifest with one
//! [`Decision`] per task (kept or dropped, why, and the numbers behind it). Nothing is dropped
//! without a line saying so.
//!
//! - [`validate`]: references must pass their own tests in the sandbox; a minimum number of tests.
//! - [`dedupe`]: exact and near-duplicate prompts (MinHash-LSH over word shingles, Jaccard checked).
//! - [`decontaminate`]: n-gram overlap with evaluation sets.
//! - [`difficulty`]: pass rates of a model (from `dllm-rl eval`) within a range.
//! - [`window`]: release dates within a window (LiveCodeBench's contamination-free splits).
//! - [`mix`]: seeded sampling to target proportions by source or kind.
//! - [`split`]: seeded, stable splits by hashing task ids.
//! - [`stats`]: counts by source, kind, number of tests, prompt length, pass rate.

pub mod dedupe;
pub mod decontaminate;
pub mod difficulty;
pub mod mix;
pub mod split;
pub mod stats;
pub mod validate;
pub mod window;

use dllm_verifier::{Task, TestSpec};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// One task's fate at one curation step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub task_id: String,
    pub step: String,
    pub kept: bool,
    pub reason: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub numbers: serde_json::Value,
}

impl Decision {
    pub fn keep(task: &Task, step: &str, reason: impl Into<String>, numbers: serde_json::Value) -> Self {
        Decision { task_id: task.id.clone(), step: step.into(), kept: true, reason: reason.into(), numbers }
    }

    pub fn drop(task: &Task, step: &str, reason: impl Into<String>, numbers: serde_json::Value) -> Self {
        Decision { task_id: task.id.clone(), step: step.into(), kept: false, reason: reason.into(), numbers }
    }
}

/// The outcome of a step: the tasks kept (in input order) and every decision.
#[derive(Debug, Default)]
pub struct Curated {
    pub kept: Vec<Task>,
    pub decisions: Vec<Decision>,
}

impl Curated {
    /// Splits `tasks` by `decisions` (one per task, in order).
    pub fn from_decisions(tasks: Vec<Task>, decisions: Vec<Decision>) -> Self {
        let kept = tasks.into_iter().zip(&decisions).filter(|(_, d)| d.kept).map(|(t, _)| t).collect();
        Curated { kept, decisions }
    }

    /// Dropped tasks counted by reason (the reason's text up to its first ':').
    pub fn dropped_by_reason(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for d in self.decisions.iter().filter(|d| !d.kept) {
            let key = d.reason.split(':').next().unwrap_or(&d.reason).trim().to_string();
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

/// A file being written, gzip-compressed when its name ends in `.gz` (what [`crate::open_text`]
/// reads back): a task file named `x.jsonl.gz` that holds plain text fails the next step.
pub enum TextWriter {
    Plain(std::io::BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
}

impl TextWriter {
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        Ok(if name.ends_with(".gz") {
            TextWriter::Gzip(flate2::write::GzEncoder::new(file, flate2::Compression::default()))
        } else {
            TextWriter::Plain(file)
        })
    }

    /// Writes the gzip trailer and flushes; dropping the writer instead would lose their errors.
    pub fn finish(self) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            TextWriter::Plain(mut w) => w.flush(),
            TextWriter::Gzip(w) => w.finish()?.flush(),
        }
    }
}

impl std::io::Write for TextWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            TextWriter::Plain(w) => w.write(buf),
            TextWriter::Gzip(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            TextWriter::Plain(w) => w.flush(),
            TextWriter::Gzip(w) => w.flush(),
        }
    }
}

/// The words of a text, lowercased, punctuation dropped: what duplicate and contamination
/// checks compare. Runs of operator characters (`+`, `**`, `==`, `<=`, `//` ...) are words too:
/// `return x + y` and `return x - y` are different problems, not one problem twice. The text is
/// put in NFKC first (fullwidth `ｉｎｔ` is `int`, the ligature `ﬁ` is `fi`, `x²` is `x2`) and
/// format characters are dropped (a soft hyphen or zero-width space inside a word), so that a
/// copy dressed up in Unicode is still a copy.
pub fn words(text: &str) -> Vec<String> {
    const OPERATORS: &str = "+-*/%=<>!&|^~@";
    let mut out: Vec<String> = Vec::new();
    // Whether the word being built is an operator run (`Some(true)`), a word (`Some(false)`), or
    // there is none.
    let mut open: Option<bool> = None;
    // Format characters go before NFKC: inside a word they would stop it composing (`e`, soft
    // hyphen, combining acute is not `é`).
    for c in text.chars().filter(|&c| !is_format(c)).nfkc() {
        let class = if c.is_alphanumeric() {
            Some(false)
        } else if OPERATORS.contains(c) {
            Some(true)
        } else {
            None
        };
        if let Some(kind) = class {
            if open != Some(kind) {
                out.push(String::new());
            }
            out.last_mut().expect("invariant: a word is open").extend(c.to_lowercase());
        }
        open = class;
    }
    // A lone `!` ends a sentence far more often than it negates; `!=` stays.
    out.retain(|w| w.chars().any(|c| c != '!'));
    out
}

/// Format characters (Unicode category Cf) that scraped text carries invisibly inside words.
fn is_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// A stable 64-bit hash (FNV-1a, then SplitMix64's finaliser so that every bit is mixed): the
/// same on every machine and Rust version, so manifests and splits replay.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut z = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The number of tests of a task: cases for stdio and call tasks; `assert` statements for
/// assertion tests; `def test_` functions for pytest files.
pub fn test_count(task: &Task) -> usize {
    match &task.spec {
        TestSpec::Stdio { tests, .. } => tests.len(),
        TestSpec::Call { tests, .. } => tests.len(),
        TestSpec::Assert { test_code, .. } => test_code.lines().filter(|l| l.trim_start().starts_with("assert")).count(),
        TestSpec::Pytest { test_code, .. } => test_code.lines().filter(|l| l.trim_start().starts_with("def test")).count(),
    }
}

#[cfg(test)]
pub(crate) fn task(id: &str, source: &str, prompt: &str) -> Task {
    serde_json::from_value(serde_json::json!({
        "id": id, "source": source, "prompt": prompt, "kind": "stdio",
        "tests": [{"stdin": "", "stdout": "1\n"}]
    }))
    .expect("a test task")
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn words_keep_operators_and_see_through_unicode_dressing() {
        // The reviewer's dd_in.jsonl: prompts differing only in an operator were exact duplicates.
        assert_eq!(words("return x + y"), ["return", "x", "+", "y"]);
        assert_ne!(words("return x + y"), words("return x - y"));
        assert_ne!(words("return x * y"), words("return x ** y"));
        assert_eq!(words("if a<=b: f(a, b)"), ["if", "a", "<=", "b", "f", "a", "b"]);
        assert_eq!(words("Hello! a != b"), ["hello", "a", "!=", "b"]);
        let plain = words("Given an array of integers, find the target.");
        assert_eq!(words("Given an array of ｉｎｔｅｇｅｒｓ, ﬁnd the ｔａｒｇｅｔ."), plain);
        assert_eq!(words("Given an array of in\u{00AD}te\u{00AD}gers, find the target."), plain);
        assert_eq!(words("Given\u{200B} an\u{200B} array of integers, find the\u{FEFF} target."), plain);
        // Forms beyond fullwidth and ligatures, which a hand-made folding table missed: maths
        // alphanumerics, decomposed accents (with a soft hyphen between letter and accent),
        // superscripts, circled digits.
        assert_eq!(words("Given an array of 𝐢𝐧𝐭𝐞𝐠𝐞𝐫𝐬, find the 𝑡𝑎𝑟𝑔𝑒𝑡."), plain);
        assert_eq!(words("caf\u{00E9} menu"), words("cafe\u{00AD}\u{0301} menu"));
        assert_eq!(words("x² + ①"), ["x2", "+", "1"]);
    }
}
