//! The canonical task: what every test format maps into (see `schema/task.schema.json`).
//!
//! One JSON object per task (JSONL files hold one per line):
//!
//! ```json
//! {"id": "mbpp/12", "kind": "assert", "entry_points": ["sort_matrix"],
//!  "test_code": "assert sort_matrix([[1, 2], [0, 0]]) == [[0, 0], [1, 2]]",
//!  "reference": "def sort_matrix(M):\n    return sorted(M, key=sum)"}
//! ```
//!
//! Kinds: `stdio` (a program reads stdin; stdout is compared), `call` (a function, or a method
//! of `class_name`, called with JSON arguments; the return value is compared), `assert`
//! (HumanEval/MBPP/LeetCode assertion code calling the candidate; the tests run in a trusted
//! process and only the candidate's calls run in the sandbox), `pytest` (a KodCode test file
//! importing from `solution`, judged the same way).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A task with its tests, limits and comparator.
// Unknown keys are rejected by `TestSpec` (serde's flatten and deny_unknown_fields do not
// combine on the outer struct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Unique id, conventionally `source/original-id`.
    pub id: String,
    /// Where it came from (`mbpp`, `leetcode`, `code_contests`, ...), for statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The problem statement shown to the policy (prompt rendering is the prompts crate's job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A reference solution, when known: `dllm-rl verify --reference` checks it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Code run before the candidate's (imports a dataset assumes, e.g. LeetCode's
    /// `from typing import *`). Trusted, visible to the candidate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prelude: String,
    /// When the problem was first published (LiveCodeBench's `contest_date`), for release-window
    /// decontamination: train on what came out before a model's cut-off, evaluate on what after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<ReleaseDate>,
    #[serde(flatten)]
    pub spec: TestSpec,
    #[serde(default)]
    pub limits: Limits,
}

/// The tests, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TestSpec {
    Stdio {
        tests: Vec<StdioTest>,
        #[serde(default)]
        comparator: TextComparator,
    },
    Call {
        /// Function name (or method name when `class_name` is set).
        entry_point: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class_name: Option<String>,
        tests: Vec<CallTest>,
        #[serde(default)]
        comparator: ValueComparator,
    },
    Assert {
        /// Names under which the tests call the candidate. `candidate` (HumanEval's
        /// `check(candidate)` parameter) is always one.
        #[serde(default)]
        entry_points: Vec<String>,
        /// Classes whose instances' methods are candidate calls (`Solution().f(...)`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        class_names: Vec<String>,
        /// Trusted set-up the tests need (MBPP's `test_setup_code`); runs in both places.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        test_setup: String,
        /// Python code with `assert` statements.
        test_code: String,
    },
    /// A pytest file (KodCode style) that imports the candidate from module `solution`; its
    /// `test*` functions and `Test*` classes are run, on the trusted side, like
    /// `assert` tests. Supported: plain asserts, `pytest.raises`; not fixtures.
    Pytest {
        /// Names the tests use from `solution` (needed for `from solution import *`; names
        /// imported explicitly are found in the code).
        #[serde(default)]
        entry_points: Vec<String>,
        test_code: String,
    },
}

/// The assertion-style view of `assert` and `pytest` tasks, which are judged alike.
pub struct AssertionTests<'a> {
    pub entry_points: &'a [String],
    pub class_names: &'a [String],
    pub test_setup: &'a str,
    pub test_code: &'a str,
    /// `module` (run the code) or `test_functions` (run it, then call its tests).
    pub runner: &'static str,
}

impl TestSpec {
    pub fn assertion_tests(&self) -> Option<AssertionTests<'_>> {
        match self {
            TestSpec::Assert { entry_points, class_names, test_setup, test_code } => Some(AssertionTests {
                entry_points,
                class_names,
                test_setup,
                test_code,
                runner: "module",
            }),
            TestSpec::Pytest { entry_points, test_code } => Some(AssertionTests {
                entry_points,
                class_names: &[],
                test_setup: "",
                test_code,
                runner: "test_functions",
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdioTest {
    pub stdin: String,
    pub stdout: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallTest {
    /// Positional arguments, as plain JSON.
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// The expected return value, as plain JSON (tuples as arrays).
    pub expected: serde_json::Value,
}

/// How program output is compared with the expected output. Strict by default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TextComparator {
    /// Byte-for-byte equality.
    Exact,
    /// LiveCodeBench's rule: surrounding blank space of the whole output ignored, the same
    /// number of lines, each line equal after collapsing runs of spaces and tabs.
    #[default]
    Lines,
    /// Whitespace-separated tokens, equal one by one; tokens that both parse as numbers may
    /// differ by `abs` absolute or `rel` relative error (declared per task).
    Tokens {
        #[serde(default)]
        abs: f64,
        #[serde(default)]
        rel: f64,
    },
    /// Like `lines`, but in any order (only for tasks that say any order is accepted).
    UnorderedLines,
}

/// How a returned value is compared with the expected JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ValueComparator {
    /// Python `==` on plain values (1 == 1.0), except that booleans are not numbers.
    #[default]
    Exact,
    /// As `exact`, but floats may differ by `abs` absolute or `rel` relative error.
    Close {
        #[serde(default)]
        abs: f64,
        #[serde(default)]
        rel: f64,
    },
    /// As `exact`, but the top-level list may be in any order.
    Unordered,
}

/// Per-test limits. Calibrated for the native backend; the wasm backend scales time by its
/// `time_scale` (pure Python runs ~4-5x slower there).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock seconds per test.
    pub time_s: f64,
    /// Address-space (native) or linear-memory (wasm) limit, MiB.
    pub memory_mb: u64,
    /// Bytes of stdout (and of stderr) kept; more is an `output_limit` verdict.
    pub output_bytes: u64,
}

/// A limit a task may not have.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("limits.{field} = {value}: {rule}")]
pub struct LimitError {
    pub field: &'static str,
    pub value: String,
    pub rule: &'static str,
}

/// The longest per-test time a task may ask for.
pub const MAX_TIME_S: f64 = 3600.0;

impl Limits {
    /// Checks that every limit is one a sandbox can apply (a negative or NaN time, a memory
    /// limit of 0: JSON allows them, no run could).
    pub fn check(&self) -> Result<(), LimitError> {
        if !(self.time_s.is_finite() && self.time_s > 0.0 && self.time_s <= MAX_TIME_S) {
            return Err(LimitError { field: "time_s", value: self.time_s.to_string(), rule: "must be seconds in (0, 3600]" });
        }
        if !(16..=1 << 20).contains(&self.memory_mb) {
            return Err(LimitError { field: "memory_mb", value: self.memory_mb.to_string(), rule: "must be MiB in [16, 1048576]" });
        }
        if !(1..=1 << 30).contains(&self.output_bytes) {
            return Err(LimitError { field: "output_bytes", value: self.output_bytes.to_string(), rule: "must be bytes in [1, 2^30]" });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { time_s: 6.0, memory_mb: 1024, output_bytes: 1 << 20 }
    }
}

/// A calendar date, `YYYY-MM-DD`. Ordered as dates (the ISO form sorts as its text does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReleaseDate(String);

impl JsonSchema for ReleaseDate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReleaseDate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A calendar date, YYYY-MM-DD.",
            "type": "string",
            "format": "date",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
        })
    }
}

impl ReleaseDate {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ReleaseDate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for ReleaseDate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a date of the form YYYY-MM-DD");
        let parts: Vec<&str> = text.split('-').collect();
        let [y, m, d] = parts[..] else { return Err(bad()) };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 || !text.bytes().all(|b| b == b'-' || b.is_ascii_digit()) {
            return Err(bad());
        }
        let (year, month, day): (u32, u32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return Err(format!("{text:?} has no month {month}")),
        };
        if !(1..=days).contains(&day) {
            return Err(format!("{text:?}: month {month} has no day {day}"));
        }
        Ok(ReleaseDate(text.to_owned()))
    }
}

impl From<ReleaseDate> for String {
    fn from(date: ReleaseDate) -> String {
        date.0
    }
}

impl std::fmt::Display for ReleaseDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The JSON Schema of a task (`verifier/schema/task.schema.json` is this, pretty-printed).
pub fn task_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Task)).expect("a schema serializes")
}

impl Task {
    /// Number of tests (for `assert` tasks: assertion statements, counted when judged).
    pub fn declared_tests(&self) -> Option<usize> {
        match &self.spec {
            TestSpec::Stdio { tests, .. } => Some(tests.len()),
            TestSpec::Call { tests, .. } => Some(tests.len()),
            TestSpec::Assert { .. } | TestSpec::Pytest { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.spec {
            TestSpec::Stdio { .. } => "stdio",
            TestSpec::Call { .. } => "call",
            TestSpec::Assert { .. } => "assert",
            TestSpec::Pytest { .. } => "pytest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let lines = [
            r#"{"id":"a","kind":"stdio","tests":[{"stdin":"1\n","stdout":"2\n"}]}"#,
            r#"{"id":"b","kind":"call","entry_point":"f","tests":[{"args":[1],"expected":2}],"comparator":{"type":"close","abs":1e-6}}"#,
            r#"{"id":"c","kind":"assert","entry_points":["f"],"test_code":"assert f(1) == 2"}"#,
            r#"{"id":"d","kind":"pytest","test_code":"from solution import f\ndef test_f():\n    assert f(1) == 2"}"#,
        ];
        for line in lines {
            let task: Task = serde_json::from_str(line).unwrap();
            let again: Task = serde_json::from_str(&serde_json::to_string(&task).unwrap()).unwrap();
            assert_eq!(task, again);
        }
    }

    /// The published schema is generated from these types; regenerate it with
    /// `UPDATE_SCHEMA=1 cargo test -p dllm-verifier schema`.
    #[test]
    fn the_published_schema_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/task.schema.json");
        let generated = serde_json::to_string_pretty(&task_schema()).unwrap() + "\n";
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(published == generated, "{} is stale: run UPDATE_SCHEMA=1 cargo test -p dllm-verifier schema", path.display());
        for kind in ["stdio", "call", "assert", "pytest"] {
            assert!(published.contains(&format!("\"{kind}\"")), "schema lacks kind {kind}");
        }
    }

    #[test]
    fn limits_no_sandbox_could_apply_are_named() {
        assert_eq!(Limits::default().check(), Ok(()));
        for (limits, field) in [
            (r#"{"time_s": -1}"#, "time_s"),
            (r#"{"time_s": 0}"#, "time_s"),
            (r#"{"time_s": 1e300}"#, "time_s"),
            (r#"{"memory_mb": 0}"#, "memory_mb"),
            (r#"{"output_bytes": 0}"#, "output_bytes"),
        ] {
            let limits: Limits = serde_json::from_str(limits).unwrap();
            let err = limits.check().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().starts_with(&format!("limits.{field} = ")), "{err}");
        }
        let nan = Limits { time_s: f64::NAN, ..Limits::default() };
        assert_eq!(nan.check().unwrap_err().field, "time_s");
    }

    #[test]
    fn release_dates_are_checked_calendar_dates() {
        let task: Task = serde_json::from_str(r#"{"id":"a","kind":"stdio","tests":[],"released":"2024-02-29"}"#).unwrap();
        assert_eq!(task.released.as_ref().map(ReleaseDate::as_str), Some("2024-02-29"));
        assert!(serde_json::to_string(&task).unwrap().contains(r#""released":"2024-02-29""#));
        for bad in ["2023-02-29", "2024-13-01", "2024-1-01", "2024-01-01T00:00:00", "yesterday", "2024-04-31"] {
            let line = format!(r#"{{"id":"a","kind":"stdio","tests":[],"released":"{bad}"}}"#);
            let err = serde_json::from_str::<Task>(&line).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let (a, b): (ReleaseDate, ReleaseDate) = ("2023-12-31".parse().unwrap(), "2024-01-01".parse().unwrap());
        assert!(a < b);
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected_by_name() {
        let err = serde_json::from_str::<Task>(r#"{"id":"a","kind":"stdio","tests":[{"stdin":"","stdot":""}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stdot"), "{err}");
        let err = serde_json::from_str::<Task>(r#"{"id":"a","kind":"shell","tests":[]}"#).unwrap_err().to_string();
        assert!(err.contains("shell"), "{err}");
        let err = serde_json::from_str::<Task>(r#"{"id":"a","kind":"stdio","tests":[],"limit":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit"), "{err}");
    }
}
