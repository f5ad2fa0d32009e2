//! Importers: one function per source layout, each turning one row into a canonical task.
//!
//! A row that cannot be imported becomes a [`RowError`] naming the file, the row (1-based line
//! for JSONL, 1-based index for a JSON array) and the field; nothing is dropped silently.

mod datasets;
mod pickle;
mod rows;

pub use rows::{open_text, read_jsonl, read_rows};

use dllm_verifier::harness::{TrustedError, TrustedJudge};

use std::path::{Path, PathBuf};

use dllm_verifier::task::{CallTest, Limits, StdioTest, TestSpec, TextComparator, ValueComparator};
use dllm_verifier::Task;
use serde_json::Value;

/// Source layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SandboxFusion's MBPP rows: `content`, `canonical_solution`, `test_list`, `labels.test_setup_code`.
    SandboxfusionMbpp,
    /// SandboxFusion's CommonOJ rows (CodeContests): `content`, `test` = JSON list of
    /// `{input: {stdin}, output: {stdout}}`.
    SandboxfusionCommonOj,
    /// rllm's LeetCode rows: `problem`, `solutions` (a `class Solution`), `tests.functional`.
    RllmLeetcode,
    /// rllm's stdin/stdout rows: `problem`, `tests` = `{inputs, outputs}`.
    RllmStdio,
    /// KodCode rows: `instruction`, `response`, `test_code` (pytest importing from `solution`).
    Kodcode,
    /// SandboxFusion's LiveCodeBench rows: `content`, `labels.task_id`, `test` = LCB's
    /// `input_output` (JSON, or base64(zlib(pickle))): stdin tests, or LeetCode-style functional
    /// tests (`fn_name`, one JSON argument per input line).
    SandboxfusionLivecodebench,
    /// SandboxFusion's CRUXEval output-prediction rows: `code`, `input`, `output`. Imported as a
    /// program that must print `repr()` of `f(input)`.
    SandboxfusionCruxeval,
    /// HumanEval / HumanEval+: `prompt`, `canonical_solution`, `test`, `entry_point`.
    Humaneval,
    /// MBPP (google-research): `text`, `code`, `test_list`, `test_setup_code`.
    Mbpp,
    /// APPS and TACO: `question`, `solutions`, `starter_code`, `input_output`.
    AppsTaco,
    /// CodeContests (deepmind): `description`, `public_tests`, `private_tests`, `solutions`.
    Codecontests,
    /// LiveCodeBench (Hugging Face rows): `question_content`, `public_test_cases`,
    /// `private_test_cases` (possibly pickled), `metadata.func_name`.
    Livecodebench,
    /// DeepCoder-Preview (rllm): `problem`, `tests` in its source's shape.
    Deepcoder,
    /// The verl layout (guru-RL code, Dream-Coder-RL-17k): chat `prompt`, `data_source`,
    /// `reward_model.ground_truth`.
    Verl,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::SandboxfusionMbpp => "sandboxfusion-mbpp",
            Format::SandboxfusionCommonOj => "sandboxfusion-commonoj",
            Format::RllmLeetcode => "rllm-leetcode",
            Format::RllmStdio => "rllm-stdio",
            Format::Kodcode => "kodcode",
            Format::SandboxfusionLivecodebench => "sandboxfusion-livecodebench",
            Format::SandboxfusionCruxeval => "sandboxfusion-cruxeval",
            Format::Humaneval => "humaneval",
            Format::Mbpp => "mbpp",
            Format::AppsTaco => "apps-taco",
            Format::Codecontests => "codecontests",
            Format::Livecodebench => "livecodebench",
            Format::Deepcoder => "deepcoder",
            Format::Verl => "verl",
        }
    }

    pub const ALL: [Format; 14] = [
        Format::Humaneval,
        Format::Mbpp,
        Format::AppsTaco,
        Format::Codecontests,
        Format::Livecodebench,
        Format::Deepcoder,
        Format::Verl,
        Format::SandboxfusionMbpp,
        Format::SandboxfusionCommonOj,
        Format::RllmLeetcode,
        Format::RllmStdio,
        Format::Kodcode,
        Format::SandboxfusionLivecodebench,
        Format::SandboxfusionCruxeval,
    ];
}

/// Imports that LeetCode solutions assume without writing them: LiveCodeBench's import block
/// (`lcb_runner/evaluation/testing_util.py`), less `sys`, `io` and `builtins`.
pub const LEETCODE_PRELUDE: &str = "from string import *\nfrom re import *\nfrom datetime import *\n\
from collections import *\nfrom heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n\
from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n\
from operator import *\nfrom typing import *\nimport string, re, datetime, collections, heapq, bisect, copy, \
math, random, statistics, itertools, functools, operator\n";

/// For each task, why no completion could be judged on its tests (they never reach the
/// candidate: a test file that defines the functions it tests; or they do not parse), or
/// `None`. Only assertion and pytest tasks are looked at, by the trusted judge, several at once.
pub fn unjudgeable(tasks: &[Task], trusted: &TrustedJudge) -> Result<Vec<Option<String>>, TrustedError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    let chunk = tasks.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = tasks
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|t| trusted.why_unjudgeable(t)).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut reasons = Vec::with_capacity(tasks.len());
        for h in handles {
            reasons.extend(h.join().expect("an analysis thread panicked")?);
        }
        Ok(reasons)
    })
}

/// The cause (`source`) is not in the messages: it is the error's source, and whoever prints the
/// chain (`dllm-rl` prints `{:#}`) would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: not a readable Parquet file: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: not gzip-compressed, although its name ends in .gz")]
    NotGzip { path: PathBuf },
    #[error("{path}:{line}: cannot read")]
    ReadLine { path: PathBuf, line: usize, source: std::io::Error },
    #[error("{path}:{line}")]
    Record { path: PathBuf, line: usize, source: serde_json::Error },
}

/// One row that could not be imported.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub file: PathBuf,
    pub row: usize,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: field `{}`: {}", self.file.display(), self.row, self.field, self.message)
    }
}

/// The tasks of a file, and the rows that failed.
#[derive(Debug, Default)]
pub struct Imported {
    pub tasks: Vec<Task>,
    /// The row each task came from (same order as `tasks`), for messages about it.
    pub rows: Vec<usize>,
    pub errors: Vec<RowError>,
}

type RowResult = Result<Task, (String, String)>;

/// Reads `path` (JSONL or a JSON array, optionally `.gz`; or `.parquet`) in `format`.
pub fn import_file(format: Format, path: &Path) -> Result<Imported, ImportError> {
    Ok(import_rows(format, path, rows::read_rows(path)?))
}

/// Imports `text` (the contents of `path`, which is only used in messages).
pub fn import_text(format: Format, path: &Path, text: &str) -> Result<Imported, ImportError> {
    Ok(import_rows(format, path, rows::text_rows(path, text)?))
}

fn import_rows(format: Format, path: &Path, rows: Vec<rows::Row>) -> Imported {
    let mut out = Imported::default();
    for (row, value) in rows {
        let result = match value {
            Ok(v) => import_row(format, row, &v),
            Err(e) => Err(("(row)".into(), e)),
        };
        match result {
            Ok(task) => {
                out.tasks.push(task);
                out.rows.push(row);
            }
            Err((field, message)) => out.errors.push(RowError { file: path.into(), row, field, message }),
        }
    }
    out
}

fn import_row(format: Format, row: usize, v: &Value) -> RowResult {
    match format {
        Format::SandboxfusionMbpp => mbpp(v),
        Format::SandboxfusionCommonOj => common_oj(row, v),
        Format::RllmLeetcode => leetcode(row, v),
        Format::RllmStdio => rllm_stdio(row, v),
        Format::Kodcode => kodcode(row, v),
        Format::SandboxfusionLivecodebench => livecodebench(row, v),
        Format::SandboxfusionCruxeval => cruxeval(row, v),
        Format::Humaneval => datasets::humaneval(v),
        Format::Mbpp => datasets::mbpp_original(v),
        Format::AppsTaco => datasets::apps_taco(row, v),
        Format::Codecontests => datasets::codecontests(row, v),
        Format::Livecodebench => datasets::livecodebench_hf(row, v),
        Format::Deepcoder => datasets::deepcoder(row, v),
        Format::Verl => datasets::verl(row, v),
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, (String, String)> {
    v.get(name).ok_or_else(|| (name.to_owned(), "missing".to_owned()))
}

fn string(v: &Value, name: &str) -> Result<String, (String, String)> {
    field(v, name)?.as_str().map(str::to_owned).ok_or_else(|| (name.to_owned(), "not a string".to_owned()))
}

fn strings(v: &Value, name: &str) -> Result<Vec<String>, (String, String)> {
    let items = field(v, name)?.as_array().ok_or_else(|| (name.to_owned(), "not a list".to_owned()))?;
    items
        .iter()
        .map(|s| s.as_str().map(str::to_owned).ok_or_else(|| (name.to_owned(), "not a list of strings".to_owned())))
        .collect()
}

/// A field that is either JSON or a string holding JSON (SandboxFusion stores both ways).
fn json_or_string(v: &Value, name: &str) -> Result<Value, (String, String)> {
    match field(v, name)? {
        Value::String(s) => dllm_verifier::exact_json::from_str(s).map_err(|e| (name.to_owned(), format!("not JSON: {e}"))),
        other => Ok(other.clone()),
    }
}

/// The function an assertion calls first: `assert name(` -> `name`.
fn first_called_name(asserts: &[String]) -> Option<String> {
    asserts.iter().find_map(|a| {
        let rest = a.trim_start().strip_prefix("assert")?.trim_start();
        let rest = rest.trim_start_matches(|c: char| c == '(' || c.is_whitespace());
        let rest = rest.strip_prefix("not ").unwrap_or(rest).trim_start();
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        (!name.is_empty() && rest[name.len()..].trim_start().starts_with('(')).then_some(name)
    })
}

fn mbpp(v: &Value) -> RowResult {
    let id = field(v, "id")?;
    let tests = strings(v, "test_list")?;
    let entry = first_called_name(&tests).ok_or_else(|| ("test_list".to_owned(), "no `assert f(...)` to name the function".to_owned()))?;
    let labels = json_or_string(v, "labels")?;
    let setup = labels.get("test_setup_code").and_then(Value::as_str).unwrap_or_default().to_owned();
    let content = string(v, "content")?;
    // MBPP's prompt shows the tests (the function name and signature come from them).
    let prompt = format!("{content}\nYour code should pass these tests:\n\n{}\n", tests.join("\n"));
    Ok(Task {
        id: format!("mbpp/{id}"),
        source: Some("mbpp".into()),
        prompt: Some(prompt),
        reference: Some(string(v, "canonical_solution")?),
        prelude: String::new(),
        released: None,
        spec: TestSpec::Assert { entry_points: vec![entry], class_names: vec![], test_setup: setup, test_code: tests.join("\n") },
        limits: Limits::default(),
    })
}

fn stdio_tests(inputs: &[String], outputs: &[String], name: &str) -> Result<Vec<StdioTest>, (String, String)> {
    if inputs.len() != outputs.len() {
        return Err((name.into(), format!("{} inputs but {} outputs", inputs.len(), outputs.len())));
    }
    if inputs.is_empty() {
        return Err((name.into(), "no tests".into()));
    }
    Ok(inputs.iter().zip(outputs).map(|(i, o)| StdioTest { stdin: i.clone(), stdout: o.clone() }).collect())
}

fn common_oj(row: usize, v: &Value) -> RowResult {
    let tests = json_or_string(v, "test")?;
    let tests = tests.as_array().ok_or_else(|| ("test".to_owned(), "not a list".to_owned()))?;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for t in tests {
        let stdin = t.pointer("/input/stdin").and_then(Value::as_str);
        let stdout = t.pointer("/output/stdout").and_then(Value::as_str);
        let (Some(i), Some(o)) = (stdin, stdout) else {
            return Err(("test".into(), "a case without input.stdin / output.stdout".into()));
        };
        inputs.push(i.to_owned());
        outputs.push(o.to_owned());
    }
    let id = v.get("id").map_or_else(|| row.to_string(), |i| i.to_string());
    Ok(Task {
        id: format!("code_contests/{id}"),
        source: Some("code_contests".into()),
        prompt: Some(string(v, "content")?),
        reference: v.get("canonical_solution").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned),
        prelude: String::new(),
        released: None,
        spec: TestSpec::Stdio { tests: stdio_tests(&inputs, &outputs, "test")?, comparator: TextComparator::Lines },
        limits: Limits::default(),
    })
}

fn leetcode(row: usize, v: &Value) -> RowResult {
    let tests = field(v, "tests")?;
    let functional = tests
        .get("functional")
        .and_then(Value::as_str)
        .ok_or_else(|| ("tests.functional".to_owned(), "missing or not a string".to_owned()))?;
    Ok(Task {
        id: format!("leetcode/{row}"),
        source: Some("leetcode".into()),
        prompt: Some(string(v, "problem")?),
        reference: Some(string(v, "solutions")?),
        prelude: LEETCODE_PRELUDE.into(),
        released: None,
        spec: TestSpec::Assert {
            entry_points: vec![],
            class_names: vec!["Solution".into()],
            test_setup: String::new(),
            test_code: functional.to_owned(),
        },
        limits: Limits::default(),
    })
}

fn rllm_stdio(row: usize, v: &Value) -> RowResult {
    let tests = field(v, "tests")?;
    let inputs = strings(tests, "inputs").map_err(|(f, m)| (format!("tests.{f}"), m))?;
    let outputs = strings(tests, "outputs").map_err(|(f, m)| (format!("tests.{f}"), m))?;
    Ok(Task {
        id: format!("code_contests_rllm/{row}"),
        source: Some("code_contests".into()),
        prompt: Some(string(v, "problem")?),
        reference: None,
        prelude: String::new(),
        released: None,
        spec: TestSpec::Stdio { tests: stdio_tests(&inputs, &outputs, "tests")?, comparator: TextComparator::Lines },
        limits: Limits::default(),
    })
}

/// KodCode: the demo files' `instruction` / `response` / `metadata.prompt_id`, or the
/// KodCode-V1 dataset's `question` / `solution` / `question_id` / `test_info` (whose
/// `function_name`s name the entry points).
fn kodcode(row: usize, v: &Value) -> RowResult {
    let v1 = v.get("question").is_some();
    let id = if v1 {
        v.get("question_id").and_then(Value::as_str).map_or_else(|| format!("row{row}"), str::to_owned)
    } else {
        // Prompt ids restart in each demo subset: qualify them with the subset (`mode`).
        let prompt_id = v.pointer("/metadata/prompt_id").and_then(Value::as_str);
        let mode = v.pointer("/metadata/mode").and_then(Value::as_str).unwrap_or("kodcode");
        prompt_id.map_or_else(|| format!("{mode}-row{row}"), |p| format!("{mode}-{p}"))
    };
    let entry_points = v
        .get("test_info")
        .and_then(Value::as_array)
        .map(|infos| infos.iter().filter_map(|i| i.get("function_name").and_then(Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default();
    let (prompt, reference) = if v1 { (string(v, "question")?, string(v, "solution")?) } else { (string(v, "instruction")?, string(v, "response")?) };
    Ok(Task {
        id: format!("kodcode/{id}"),
        source: Some("kodcode".into()),
        prompt: Some(prompt),
        reference: Some(reference),
        prelude: String::new(),
        released: None,
        spec: TestSpec::Pytest { entry_points, test_code: string(v, "test_code")? },
        limits: Limits::default(),
    })
}

/// LiveCodeBench's `input_output`: JSON text, or base64(zlib(pickle({"input_output": JSON}))).
fn lcb_input_output(text: &str) -> Result<Value, (String, String)> {
    let json = match dllm_verifier::exact_json::from_str::<Value>(text) {
        Ok(Value::String(inner)) => inner,
        Ok(v) => return Ok(v),
        Err(_) => {
            let dict = pickle::decode_field(text).map_err(|e| ("test".to_owned(), e))?;
            dict.get("input_output").cloned().flatten().ok_or_else(|| ("test".to_owned(), "no `input_output` in the pickled dict".to_owned()))?
        }
    };
    dllm_verifier::exact_json::from_str(&json).map_err(|e| ("test".to_owned(), format!("input_output is not JSON: {e}")))
}

fn livecodebench(row: usize, v: &Value) -> RowResult {
    let labels = json_or_string(v, "labels")?;
    let id = labels.get("task_id").and_then(Value::as_str).map_or_else(|| row.to_string(), str::to_owned);
    let io = lcb_input_output(&string(v, "test")?)?;
    let list = |name: &str| -> Result<Vec<String>, (String, String)> {
        strings(&io, name).map_err(|(f, m)| (format!("test.{f}"), m))
    };
    let (inputs, outputs) = (list("inputs")?, list("outputs")?);
    let (spec, prelude) = match io.get("fn_name").and_then(Value::as_str) {
        None => (TestSpec::Stdio { tests: stdio_tests(&inputs, &outputs, "test")?, comparator: TextComparator::Lines }, String::new()),
        Some(name) => {
            if inputs.len() != outputs.len() || inputs.is_empty() {
                return Err(("test".into(), format!("{} inputs, {} outputs", inputs.len(), outputs.len())));
            }
            let parse = |s: &str| dllm_verifier::exact_json::from_str::<Value>(s).map_err(|e| ("test".to_owned(), format!("`{s}` is not JSON: {e}")));
            let tests = inputs
                .iter()
                .zip(&outputs)
                .map(|(i, o)| {
                    let args = i.lines().filter(|l| !l.trim().is_empty()).map(parse).collect::<Result<Vec<_>, _>>()?;
                    Ok(CallTest { args, kwargs: Default::default(), expected: parse(o)? })
                })
                .collect::<Result<Vec<_>, (String, String)>>()?;
            let spec = TestSpec::Call { entry_point: name.into(), class_name: Some("Solution".into()), tests, comparator: ValueComparator::Exact };
            (spec, LEETCODE_PRELUDE.to_owned())
        }
    };
    Ok(Task {
        id: format!("livecodebench/{id}"),
        source: Some("livecodebench".into()),
        prompt: Some(string(v, "content")?),
        reference: v.get("canonical_solution").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned),
        prelude,
        released: None,
        spec,
        limits: Limits::default(),
    })
}

fn cruxeval(row: usize, v: &Value) -> RowResult {
    let (code, input, output) = (string(v, "code")?, string(v, "input")?, string(v, "output")?);
    let id = v.get("id").and_then(Value::as_str).map_or_else(|| row.to_string(), str::to_owned);
    let prompt = format!(
        "Here is a Python function:\n\n```python\n{code}\n```\n\nWhat does `f({input})` return? \
         Write a program that prints the `repr()` of the returned value."
    );
    Ok(Task {
        id: format!("cruxeval/{id}"),
        source: Some("cruxeval".into()),
        prompt: Some(prompt),
        reference: Some(format!("{code}\nprint(repr(f({input})))\n")),
        prelude: String::new(),
        released: None,
        spec: TestSpec::Stdio {
            tests: vec![StdioTest { stdin: String::new(), stdout: format!("{output}\n") }],
            comparator: TextComparator::Lines,
        },
        limits: Limits::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_function_an_assertion_calls() {
        let t = |s: &str| first_called_name(&[s.to_owned()]);
        assert_eq!(t("assert remove_Occ(\"hello\",\"l\") == \"heo\""), Some("remove_Occ".into()));
        assert_eq!(t("assert (sort_matrix([[1]])==[[1]])"), Some("sort_matrix".into()));
        assert_eq!(t("assert not is_prime(4)"), Some("is_prime".into()));
        assert_eq!(t("assert x == 1"), None);
    }

    #[test]
    fn bad_rows_are_named_by_file_row_and_field() {
        let dir = std::env::temp_dir().join(format!("dllm-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mbpp.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 1, \"content\": \"c\", \"canonical_solution\": \"def f(): pass\", \"labels\": {}, \"test_list\": [\"assert f() == None\"]}\n\
             {\"id\": 2, \"content\": \"c\", \"labels\": {}, \"test_list\": 3}\nnot json\n",
        )
        .unwrap();
        let got = import_file(Format::SandboxfusionMbpp, &path).unwrap();
        assert_eq!(got.tasks.len(), 1);
        assert_eq!(got.tasks[0].id, "mbpp/1");
        assert_eq!(got.errors.len(), 2);
        assert_eq!((got.errors[0].row, got.errors[0].field.as_str()), (2, "test_list"));
        assert_eq!(got.errors[1].row, 3);
        assert!(got.errors[0].to_string().contains("mbpp.jsonl:2: field `test_list`"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_file_names_its_cause_once_in_the_chain() {
        let err = import_file(Format::Mbpp, Path::new("/no/such/file.jsonl")).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert_eq!(err.to_string(), "cannot read /no/such/file.jsonl");
        assert!(cause.contains("No such file"), "{cause}");
    }
}
