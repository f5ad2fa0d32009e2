//! Reward functions: a verdict (and the completion it judged) → a scalar, with a reason.
//!
//! Components, weighted and summed (a TOML `[rewards]` section names them):
//! - `pass_all` (weight 1 by default, Dream-Coder's reward): 1 if code was found and every test
//!   passed, else 0;
//! - `pass_fraction`: the fraction of tests passed (DiffuCoder's `code` reward);
//! - `format`: 1 for prose plus exactly one closed ```` ```python ```` block that ends the text
//!   and parses, 0.5 when that block has a syntax error, 0 otherwise (DiffuCoder's
//!   `code_format`); a syntax error is read from the verdict (the sandbox compiled the code), so
//!   no extra interpreter runs;
//! - `overlong`: DAPO's soft overlong penalty, 0 up to `max_tokens - buffer` tokens, then falling
//!   linearly to -1 at `max_tokens` (and -1 beyond).
//!
//! A verdict spoiled by the sandbox (`sandbox_error`) yields no reward at all: it says nothing
//! about the completion and must be retried, never counted as a failure.

use dllm_verifier::{CodeSource, TaskVerdict, TestVerdict};
use serde::{Deserialize, Serialize};

/// Weights of the reward components; 0 leaves a component out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub pass_all: f64,
    pub pass_fraction: f64,
    pub format: f64,
    pub overlong: Option<OverlongPenalty>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig { pass_all: 1.0, pass_fraction: 0.0, format: 0.0, overlong: None }
    }
}

/// DAPO's soft overlong punishment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlongPenalty {
    pub weight: f64,
    pub max_tokens: usize,
    pub buffer: usize,
}

/// One component's contribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub value: f64,
    pub weight: f64,
    pub reason: String,
}

/// A completion's reward and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub total: f64,
    pub components: Vec<Component>,
}

/// What a reward is computed from.
pub struct Judged<'a> {
    /// The model's text (for the format check).
    pub completion: &'a str,
    /// Completion tokens up to the stop (for the length penalty).
    pub tokens: usize,
    pub verdict: &'a TaskVerdict,
}

/// The verdict could not be used: the sandbox failed, the run must be retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("verdict of {task_id} is a sandbox failure; retry it instead of rewarding it")]
pub struct Unrewardable {
    pub task_id: String,
}

impl RewardConfig {
    pub fn reward(&self, judged: &Judged) -> Result<Reward, Unrewardable> {
        let v = judged.verdict;
        if v.sandbox_error {
            return Err(Unrewardable { task_id: v.task_id.clone() });
        }
        let mut components = Vec::new();
        let mut add = |name: &str, weight: f64, (value, reason): (f64, String)| {
            if weight != 0.0 {
                components.push(Component { name: name.into(), value, weight, reason });
            }
        };
        add("pass_all", self.pass_all, pass_all(v));
        add("pass_fraction", self.pass_fraction, pass_fraction(v));
        add("format", self.format, format(judged.completion, v));
        if let Some(p) = &self.overlong {
            add("overlong", p.weight, overlong(judged.tokens, p));
        }
        let total = components.iter().map(|c| c.value * c.weight).sum();
        Ok(Reward { total, components })
    }
}

fn tests_summary(v: &TaskVerdict) -> String {
    let passed = v.tests.iter().filter(|t| t.verdict.passed()).count();
    let not_run = v.tests.iter().filter(|t| t.verdict == TestVerdict::NotRun).count();
    let stopped = if not_run > 0 { format!(" ({not_run} not run after it)") } else { String::new() };
    match v.tests.iter().find(|t| !t.verdict.passed()) {
        Some(first) => format!("{passed}/{} tests passed; first failure: {}{stopped}", v.tests.len(), first.verdict.name()),
        None => format!("all {} tests passed", v.tests.len()),
    }
}

fn pass_all(v: &TaskVerdict) -> (f64, String) {
    if v.code_source.is_none() {
        return (0.0, "no code in the completion".into());
    }
    if let Some(e) = &v.task_error {
        return (0.0, format!("the task's tests cannot run: {e}"));
    }
    (if v.all_passed { 1.0 } else { 0.0 }, tests_summary(v))
}

fn pass_fraction(v: &TaskVerdict) -> (f64, String) {
    if v.code_source.is_none() {
        return (0.0, "no code in the completion".into());
    }
    (v.pass_fraction, tests_summary(v))
}

/// Whether the sandbox reported a syntax error for this code.
fn syntax_error(v: &TaskVerdict) -> bool {
    v.tests.iter().any(|t| match &t.verdict {
        TestVerdict::RuntimeError { exception } => {
            exception.starts_with("SyntaxError") || exception.starts_with("IndentationError") || exception.starts_with("TabError")
        }
        _ => false,
    })
}

fn format(completion: &str, v: &TaskVerdict) -> (f64, String) {
    let fences: Vec<(usize, &str)> =
        completion.lines().enumerate().filter_map(|(i, l)| l.trim_start().strip_prefix("```").map(|info| (i, info.trim()))).collect();
    let last_line = completion.trim_end().lines().count().saturating_sub(1);
    let shape = matches!(fences.as_slice(),
        [(_, open), (close_at, "")] if matches!(*open, "python" | "py" | "python3") && *close_at == last_line);
    if !shape || v.code_source != Some(CodeSource::Fenced) {
        let reason = match fences.len() {
            0 => "no fenced code block".to_string(),
            2 => "the block is not tagged python or does not end the answer".to_string(),
            n => format!("{} fenced blocks, expected one", n / 2 + n % 2),
        };
        return (0.0, reason);
    }
    if syntax_error(v) {
        (0.5, "one python block, with a syntax error".into())
    } else {
        (1.0, "one python block ending the answer".into())
    }
}

fn overlong(tokens: usize, p: &OverlongPenalty) -> (f64, String) {
    let free = p.max_tokens.saturating_sub(p.buffer);
    let value = if tokens <= free {
        0.0
    } else if tokens <= p.max_tokens && p.buffer > 0 {
        -((tokens - free) as f64) / p.buffer as f64
    } else {
        -1.0
    };
    (value, format!("{tokens} tokens (free up to {free}, limit {})", p.max_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dllm_verifier::TestResult;

    fn verdict(code: Option<CodeSource>, outcomes: &[TestVerdict]) -> TaskVerdict {
        let tests = outcomes
            .iter()
            .map(|v| TestResult { verdict: v.clone(), seconds: 0.01, stdout: String::new(), stderr: String::new() })
            .collect();
        TaskVerdict::from_tests("t/1", code, tests, 0.1)
    }

    const GOOD: &str = "Here is the solution.\n```python\ndef f(x):\n    return x\n```";

    #[test]
    fn pass_all_is_binary_and_explains_itself() {
        let cfg = RewardConfig::default();
        let all = verdict(Some(CodeSource::Fenced), &[TestVerdict::Passed, TestVerdict::Passed]);
        let r = cfg.reward(&Judged { completion: GOOD, tokens: 10, verdict: &all }).unwrap();
        assert_eq!(r.total, 1.0);
        assert_eq!(r.components[0].reason, "all 2 tests passed");
        let some = verdict(Some(CodeSource::Fenced), &[TestVerdict::Passed, TestVerdict::WrongAnswer]);
        let r = cfg.reward(&Judged { completion: GOOD, tokens: 10, verdict: &some }).unwrap();
        assert_eq!(r.total, 0.0);
        assert_eq!(r.components[0].reason, "1/2 tests passed; first failure: wrong_answer");
        let stopped = verdict(Some(CodeSource::Fenced), &[TestVerdict::WrongAnswer, TestVerdict::NotRun, TestVerdict::NotRun]);
        let r = cfg.reward(&Judged { completion: GOOD, tokens: 10, verdict: &stopped }).unwrap();
        assert_eq!(r.total, 0.0);
        assert_eq!(r.components[0].reason, "0/3 tests passed; first failure: wrong_answer (2 not run after it)");
        let none = verdict(None, &[]);
        assert_eq!(cfg.reward(&Judged { completion: "I don't know", tokens: 3, verdict: &none }).unwrap().total, 0.0);
    }

    #[test]
    fn diffucoder_mix_of_pass_fraction_and_format() {
        let cfg = RewardConfig { pass_all: 0.0, pass_fraction: 2.0, format: 0.5, overlong: None };
        let some = verdict(Some(CodeSource::Fenced), &[TestVerdict::Passed, TestVerdict::WrongAnswer, TestVerdict::Passed, TestVerdict::Timeout]);
        let r = cfg.reward(&Judged { completion: GOOD, tokens: 10, verdict: &some }).unwrap();
        assert!((r.total - (2.0 * 0.5 + 0.5 * 1.0)).abs() < 1e-12, "{r:?}");
        let syntax = verdict(Some(CodeSource::Fenced), &[TestVerdict::RuntimeError { exception: "SyntaxError: invalid syntax".into() }]);
        let r = cfg.reward(&Judged { completion: GOOD, tokens: 10, verdict: &syntax }).unwrap();
        assert_eq!(r.components[1].value, 0.5);
    }

    #[test]
    fn format_wants_one_python_block_that_ends_the_answer() {
        let ok = verdict(Some(CodeSource::Fenced), &[TestVerdict::Passed]);
        let cases = [
            (GOOD, 1.0),
            ("```python\nx = 1\n```\nHope this helps!", 0.0),
            ("```python\nx = 1\n```\n```python\ny = 2\n```", 0.0),
            ("```js\nx = 1\n```", 0.0),
            ("x = 1", 0.0),
        ];
        for (text, expected) in cases {
            assert_eq!(format(text, &ok).0, expected, "{text:?}");
        }
        assert_eq!(format(GOOD, &verdict(Some(CodeSource::Raw), &[TestVerdict::Passed])).0, 0.0);
    }

    #[test]
    fn overlong_penalty_is_dapos_ramp() {
        let p = OverlongPenalty { weight: 1.0, max_tokens: 100, buffer: 20 };
        assert_eq!(overlong(80, &p).0, 0.0);
        assert_eq!(overlong(90, &p).0, -0.5);
        assert_eq!(overlong(100, &p).0, -1.0);
        assert_eq!(overlong(150, &p).0, -1.0);
    }

    #[test]
    fn sandbox_failures_are_not_rewarded() {
        let broken = verdict(Some(CodeSource::Fenced), &[TestVerdict::SandboxError { message: "fork failed".into() }]);
        let err = RewardConfig::default().reward(&Judged { completion: GOOD, tokens: 5, verdict: &broken }).unwrap_err();
        assert_eq!(err.task_id, "t/1");
    }

    #[test]
    fn toml_names_the_components() {
        let cfg: RewardConfig = toml::from_str("pass_all = 0.0\npass_fraction = 2.0\nformat = 0.5\n[overlong]\nweight = 1.0\nmax_tokens = 768\nbuffer = 128\n").unwrap();
        assert_eq!(cfg.overlong.unwrap().buffer, 128);
        assert!(toml::from_str::<RewardConfig>("pass_al = 1.0").unwrap_err().to_string().contains("pass_al"));
    }
}
