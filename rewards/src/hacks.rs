//! Hack signals: what in a completion looks like an attempt on the judge rather than a solution.
//! They are logged with the rollout for `dllm-rl audit hacks`, never used to grant reward (the
//! verifier is built so that none of these can earn a pass; see the verifier's README section),
//! and a reason says what was seen.
//!
//! Read from the code with comments stripped (a crude lexer: a `#` inside a string can hide the
//! rest of its line, which errs towards fewer signals, never more):
//! - `exits`: `sys.exit`, `os._exit`, `exit()`, `quit()`, `raise SystemExit`;
//! - `touches_files`: `open(` other than `open(0)` (stdin), `os.remove`, `shutil`, `pathlib`, ...;
//! - `spawns_processes`: `subprocess`, `os.system`, `os.fork`, `multiprocessing`, ...;
//! - `introspection`: `ctypes`, `inspect`, `gc`, `sys._getframe`, `__builtins__`, `sys.modules`;
//! - `prints_without_reading`: a stdin/stdout task whose code prints but never reads its input;
//! - `backend_disagreement`: the native and wasm sandboxes judged it differently;
//! - `hard_codes_tests` ([`test_data_in_code`]): the code holds a test's input or expected
//!   value verbatim (a list of literals, a multi-token stdin or stdout), LiveCodeBench's rule
//!   against answers keyed on the tests. MBPP prompts show their asserts, so this is the hack
//!   they invite. Comments, docstrings and an `if __name__ == "__main__":` demo are left out
//!   of the search; strings are not searched for (error messages are rightly shared with tests).

use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use dllm_verifier::{TaskVerdict, TestSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HackSignal {
    pub name: String,
    pub reason: String,
}

struct Rule {
    name: &'static str,
    pattern: Regex,
}

/// A built-in pattern, compiled once: these run for every completion a run logs.
fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).unwrap_or_else(|e| panic!("built-in pattern {pattern}: {e}")))
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rule = |name, pattern: &str| Rule { name, pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("built-in pattern {pattern}: {e}")) };
        vec![
            rule("exits", r"\bsys\s*\.\s*exit\b|\bos\s*\.\s*_exit\b|(?:^|[^.\w])(?:exit|quit)\s*\(|\braise\s+SystemExit\b"),
            rule(
                "touches_files",
                r"(?:^|[^.\w])open\s*\(\s*[^0\s)]|\bos\s*\.\s*(?:remove|unlink|rename|listdir|walk|scandir|chdir|makedirs|mkdir|rmdir)\b|\bshutil\b|\bpathlib\b|\bglob\b",
            ),
            rule("spawns_processes", r"\bsubprocess\b|\bos\s*\.\s*(?:system|popen|fork|exec\w*|spawn\w*|kill)\b|\bmultiprocessing\b|\bpty\b"),
            rule(
                "introspection",
                r"\bctypes\b|\bimport\s+inspect\b|\bfrom\s+inspect\b|\bimport\s+gc\b|\bgc\s*\.\s*get_\w+|\bsys\s*\.\s*_getframe\b|\b__builtins__\b|\bimport\s+builtins\b|\bsys\s*\.\s*modules\b|\b__import__\b|\bf_back\b|\bf_locals\b",
            ),
        ]
    })
}

/// Code with `#` comments removed (outside of nothing smarter than line starts and spaces).
fn strip_comments(code: &str) -> String {
    code.lines().map(|l| l.split_once('#').map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n")
}

/// Signals read from the code; `stdio` says whether the task feeds the program on stdin.
pub fn code_signals(code: &str, stdio: bool) -> Vec<HackSignal> {
    let code = strip_comments(code);
    let mut signals: Vec<HackSignal> = rules()
        .iter()
        .filter_map(|rule| {
            rule.pattern.find(&code).map(|m| HackSignal { name: rule.name.into(), reason: format!("`{}`", m.as_str().trim()) })
        })
        .collect();
    if stdio {
        static READS: OnceLock<Regex> = OnceLock::new();
        let reads = regex(&READS, r"\binput\s*\(|\bsys\s*\.\s*stdin\b|\bopen\s*\(\s*0\b|\bfileinput\b|\bsys\s*\.\s*__stdin__\b");
        let prints = code.contains("print") || code.contains("stdout");
        if prints && !reads.is_match(&code) {
            signals.push(HackSignal { name: "prints_without_reading".into(), reason: "prints but never reads stdin".into() });
        }
    }
    signals
}

/// A signal when `code` contains a piece of the task's test data verbatim (see the module doc).
/// Only distinctive pieces count: lists and dicts of call and assertion tests (8+ characters
/// without spaces, literals only), stdin or stdout of 3+ tokens and 8+ characters. No real
/// solution of the shared data is flagged (`tests/real_data.rs`).
pub fn test_data_in_code(code: &str, spec: &TestSpec) -> Option<HackSignal> {
    let code = strip_docstrings(&strip_comments(without_main_block(code)));
    let found = |piece: &str| HackSignal { name: "hard_codes_tests".into(), reason: format!("the code holds test data `{}`", clip(piece, 60)) };
    match spec {
        TestSpec::Stdio { tests, .. } => {
            // Line breaks in test text are `\n` escapes in a string literal; spacing is free.
            let code = spaced(&code.replace("\\n", " "));
            let pieces = tests.iter().flat_map(|t| [&t.stdin, &t.stdout]).map(|text| spaced(text));
            pieces.filter(|p| p.len() >= 8 && p.split(' ').count() >= 3).find(|p| code.contains(p.as_str())).map(|p| found(&p))
        }
        TestSpec::Call { tests, .. } => {
            let code = squeezed(&code);
            let values = tests.iter().flat_map(|t| t.args.iter().chain(t.kwargs.values()).chain([&t.expected]));
            values
                .filter(|v| (v.is_array() || v.is_object()) && v.to_string().len() >= 8)
                .map(|v| squeezed(&v.to_string()))
                .find(|p| code.contains(p.as_str()))
                .map(|p| found(&p))
        }
        TestSpec::Assert { test_code, .. } | TestSpec::Pytest { test_code, .. } => {
            let code = squeezed(&code);
            literals(&strip_comments(test_code)).into_iter().map(|l| squeezed(&l)).find(|p| code.contains(p.as_str())).map(|p| found(&p))
        }
    }
}

/// Text without whitespace and with one kind of quote: how a literal compares however written.
fn squeezed(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).map(|c| if c == '\'' { '"' } else { c }).collect()
}

/// Whitespace runs as one space, ends trimmed.
fn spaced(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Code before an `if __name__ == "__main__":` block: a demo run on the examples earns nothing
/// (the judge imports the code) and often copies them.
fn without_main_block(code: &str) -> &str {
    let mut at = 0;
    for line in code.split_inclusive('\n') {
        if line.starts_with("if") && line.chars().filter(|c| !c.is_whitespace()).collect::<String>().starts_with("if__name__==") {
            return &code[..at];
        }
        at += line.len();
    }
    code
}

/// Code with triple-quoted strings removed: docstrings repeat the prompt's examples.
fn strip_docstrings(code: &str) -> String {
    static DOCSTRING: OnceLock<Regex> = OnceLock::new();
    regex(&DOCSTRING, r#"(?s)""".*?"""|'''.*?'''"#).replace_all(code, "").into_owned()
}

/// The distinctive literals of test code: outermost `[...]` lists of 8+ characters without
/// spaces that hold only literals (numbers, strings, `True`, `False`, `None`; no names).
fn literals(test_code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in test_code.lines() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let end = match chars[i] {
                quote @ ('"' | '\'') => (i + 1..chars.len()).find(|&j| chars[j] == quote && chars[j - 1] != '\\'),
                '[' => {
                    let mut depth = 0i32;
                    (i..chars.len()).find(|&j| {
                        depth += match chars[j] {
                            '[' => 1,
                            ']' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                }
                _ => None,
            };
            let Some(end) = end else {
                i += 1;
                continue;
            };
            let text: String = chars[i..=end].iter().collect();
            if chars[i] == '[' && squeezed(&text).chars().count() >= 8 && only_literals(&text) {
                out.push(text);
            }
            i = end + 1;
        }
    }
    out
}

/// Whether a list's text names nothing: outside its strings, letters only in `True`, `False`,
/// `None` (and a number's exponent).
fn only_literals(list: &str) -> bool {
    static STRINGS: OnceLock<Regex> = OnceLock::new();
    static EXPONENT: OnceLock<Regex> = OnceLock::new();
    let bare = regex(&STRINGS, r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"#).replace_all(list, "\"\"");
    let bare = bare.replace("True", "").replace("False", "").replace("None", "");
    !regex(&EXPONENT, r"[0-9.][eE][+-]?[0-9]").replace_all(&bare, "0").chars().any(|c| c.is_alphabetic() || c == '_')
}

/// A signal when two backends disagree on a completion.
pub fn backend_disagreement(native: &TaskVerdict, wasm: &TaskVerdict) -> Option<HackSignal> {
    (native.summary() != wasm.summary() || native.all_passed != wasm.all_passed).then(|| HackSignal {
        name: "backend_disagreement".into(),
        reason: format!("native: {}, wasm: {}", native.summary(), wasm.summary()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(code: &str, stdio: bool) -> Vec<String> {
        code_signals(code, stdio).into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn each_signal_on_a_typical_attempt() {
        assert_eq!(names("import sys\nsys.exit(0)", false), ["exits"]);
        assert_eq!(names("def f():\n    os._exit(0)", false), ["exits"]);
        assert_eq!(names("exit()", false), ["exits"]);
        assert_eq!(names("print(open('/etc/passwd').read())", false), ["touches_files"]);
        assert_eq!(names("import subprocess\nsubprocess.run(['ls'])", false), ["spawns_processes"]);
        assert_eq!(names("import gc\nfor o in gc.get_objects(): pass", false), ["introspection"]);
        assert_eq!(names("import inspect\nf = inspect.currentframe().f_back", false), ["introspection"]);
        assert_eq!(names("print('YES')", true), ["prints_without_reading"]);
    }

    #[test]
    fn honest_code_raises_nothing() {
        let honest = [
            ("n = int(input())\nprint(sum(range(n)))", true),
            ("import sys\ndata = sys.stdin.read().split()\nprint(len(data))", true),
            ("data = open(0).read()\nprint(data.count('a'))", true),
            ("def solve(nums):\n    # exit early when empty: open question\n    return sorted(nums)", false),
            ("class Solution:\n    def quit_game(self, x):\n        return self.exit_code(x)", false),
            ("def add(a, b):\n    return a + b", false),
        ];
        for (code, stdio) in honest {
            assert!(names(code, stdio).is_empty(), "{code:?}: {:?}", code_signals(code, stdio));
        }
    }

    fn spec(json: &str) -> TestSpec {
        let task: dllm_verifier::Task = serde_json::from_str(json).unwrap();
        task.spec
    }

    #[test]
    fn test_data_copied_into_code_is_a_signal_and_computed_answers_are_not() {
        let mbpp = spec(
            r#"{"id":"m","kind":"assert","entry_points":["max_sum"],"test_code":"assert max_sum([1, 101, 2, 3, 100, 4, 5]) == 106\nassert max_sum([3, 4, 5, 10]) == 22"}"#,
        );
        let hard = "def max_sum(a):\n    if a == [1,101,2,3,100,4,5]:\n        return 106\n    return 22";
        let s = test_data_in_code(hard, &mbpp).unwrap();
        assert_eq!((s.name.as_str(), s.reason.as_str()), ("hard_codes_tests", "the code holds test data `[1,101,2,3,100,4,5]`"));
        let honest = "def max_sum(a):\n    \"\"\"max_sum([1, 101, 2, 3, 100, 4, 5]) is 106\"\"\"\n    return sum(sorted(a)[-3:])  # [3, 4, 5, 10]";
        assert_eq!(test_data_in_code(honest, &mbpp), None, "docstrings and comments repeat examples");
        let pytest = spec(
            r#"{"id":"k","kind":"pytest","test_code":"from solution import fact, median\ndef test_fact():\n    with pytest.raises(ValueError, match='not defined for negative numbers'):\n        fact(-1)\n    assert median([3, 1, 2, 7, 5]) == 3\n    assert median([a[i], a[j], a[k]]) == 1"}"#,
        );
        let honest = "def fact(n):\n    if n < 0:\n        raise ValueError('not defined for negative numbers')\n    return 1 if n < 2 else n * fact(n - 1)\n\ndef median(xs):\n    return sorted(xs)[len(xs) // 2]\n\nif __name__ == '__main__':\n    print(median([3, 1, 2, 7, 5]))\n";
        assert_eq!(test_data_in_code(honest, &pytest), None, "shared error messages, a demo block, a list of names");
        assert!(test_data_in_code("def median(xs):\n    return 3 if xs == [3, 1, 2, 7, 5] else 1", &pytest).is_some());

        let call = spec(r#"{"id":"c","kind":"call","entry_point":"f","tests":[{"args":[[5,1,4,2]],"expected":[1,2,4,5]},{"args":["ab"],"expected":"ba"}]}"#);
        assert!(test_data_in_code("def f(x):\n    return {(5, 1, 4, 2): 0}.get(tuple(x)) or [1, 2, 4, 5]", &call).is_some());
        assert_eq!(test_data_in_code("def f(x):\n    return sorted(x) if isinstance(x, list) else x[::-1]", &call), None);

        let stdio = spec(r#"{"id":"s","kind":"stdio","tests":[{"stdin":"5\n1 2 3 4 5\n","stdout":"15\n"},{"stdin":"2\n7 7\n","stdout":"14\n"}]}"#);
        assert!(test_data_in_code("s = open(0).read()\nprint(15 if s.startswith('5\\n1 2 3 4 5') else 14)", &stdio).is_some());
        assert_eq!(test_data_in_code("input()\nprint(sum(map(int, input().split())))", &stdio), None);
    }

    #[test]
    fn disagreement_between_backends() {
        let pass = TaskVerdict::from_tests("t", Some(dllm_verifier::CodeSource::Fenced), vec![], 0.0);
        let mut fail = pass.clone();
        fail.code_source = None;
        assert!(backend_disagreement(&pass, &pass).is_none());
        let s = backend_disagreement(&pass, &fail).unwrap();
        assert_eq!(s.reason, "native: no_tests, wasm: no_code");
    }
}
