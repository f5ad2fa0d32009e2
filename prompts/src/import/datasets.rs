//! Importers for the public datasets' own layouts (Hugging Face rows, as JSONL, JSON, `.gz` or
//! Parquet): HumanEval(+), MBPP, APPS / TACO, CodeContests, LiveCodeBench, DeepCoder-Preview,
//! and the verl layout (guru-RL and other verl parquet sets). Field notes:
//! `../shared/research/verifier.md` §2.

use dllm_verifier::task::{CallTest, Limits, ReleaseDate, StdioTest, TestSpec, TextComparator, ValueComparator};
use dllm_verifier::Task;
use serde_json::Value;

use super::pickle::{decode_any, Pickled};
use super::{field, first_called_name, json_or_string, stdio_tests, string, strings, RowResult, LEETCODE_PRELUDE};

fn err(field: &str, message: impl Into<String>) -> (String, String) {
    (field.to_owned(), message.into())
}

/// HumanEval (and HumanEval+): `task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`.
pub fn humaneval(v: &Value) -> RowResult {
    let id = string(v, "task_id")?;
    let entry = string(v, "entry_point")?;
    let prompt = string(v, "prompt")?;
    let test = string(v, "test")?;
    let test_setup = prompt_before_entry_point(&prompt, &entry);
    Ok(Task {
        id: format!("humaneval/{}", id.rsplit('/').next().unwrap_or(&id)),
        source: Some("humaneval".into()),
        reference: Some(format!("{prompt}{}", string(v, "canonical_solution")?)),
        prompt: Some(prompt),
        prelude: String::new(),
        released: None,
        spec: TestSpec::Assert {
            entry_points: vec![entry.clone()],
            class_names: vec![],
            test_setup,
            test_code: format!("{test}\n\ncheck({entry})\n"),
        },
        limits: Limits::default(),
    })
}

/// What a HumanEval prompt defines before the entry point's signature: imports and helpers the
/// tests call (`poly` of HumanEval/32, `encode_cyclic` of /38). They are the task's, so they run
/// as trusted set-up: left to the candidate, `def poly(xs, x): return 0` passed HumanEval/32.
fn prompt_before_entry_point(prompt: &str, entry: &str) -> String {
    let signature = format!("def {entry}(");
    let mut offset = 0;
    for line in prompt.split_inclusive('\n') {
        if line.starts_with(&signature) {
            let setup = &prompt[..offset];
            return if setup.trim().is_empty() { String::new() } else { setup.to_owned() };
        }
        offset += line.len();
    }
    String::new()
}

/// MBPP as google-research publishes it: `task_id`, `text`, `code`, `test_list`, `test_setup_code`.
pub fn mbpp_original(v: &Value) -> RowResult {
    let id = field(v, "task_id")?;
    let tests = strings(v, "test_list")?;
    let entry = first_called_name(&tests).ok_or_else(|| err("test_list", "no `assert f(...)` to name the function"))?;
    let text = string(v, "text")?;
    Ok(Task {
        id: format!("mbpp/{}", id.as_str().map_or_else(|| id.to_string(), str::to_owned)),
        source: Some("mbpp".into()),
        prompt: Some(format!("{text}\nYour code should pass these tests:\n\n{}\n", tests.join("\n"))),
        reference: Some(string(v, "code")?),
        prelude: String::new(),
        released: None,
        spec: TestSpec::Assert {
            entry_points: vec![entry],
            class_names: vec![],
            test_setup: v.get("test_setup_code").and_then(Value::as_str).unwrap_or_default().to_owned(),
            test_code: tests.join("\n"),
        },
        limits: Limits::default(),
    })
}

/// A value's text form, for ids.
fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// `{inputs, outputs, fn_name?}` (APPS, TACO, DeepCoder's taco/apps/primeintellect rows) →
/// stdio tests, or calls when `fn_name` is set (APPS wraps each expected return value in a
/// one-element list, which is unwrapped). `starter` decides between a function and a
/// `class Solution` method.
fn apps_tests(io: &Value, starter: &str, name: &str) -> Result<(TestSpec, String), (String, String)> {
    let list = |key: &str| io.get(key).and_then(Value::as_array).ok_or_else(|| err(name, format!("no `{key}` list")));
    let (inputs, outputs) = (list("inputs")?, list("outputs")?);
    if inputs.len() != outputs.len() || inputs.is_empty() {
        return Err(err(name, format!("{} inputs, {} outputs", inputs.len(), outputs.len())));
    }
    match io.get("fn_name").and_then(Value::as_str) {
        None => {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Array(lines) => lines.iter().map(text_of).collect::<Vec<_>>().join("\n"),
                other => other.to_string(),
            };
            let tests = inputs.iter().zip(outputs).map(|(i, o)| StdioTest { stdin: text(i), stdout: text(o) }).collect();
            Ok((TestSpec::Stdio { tests, comparator: TextComparator::Lines }, String::new()))
        }
        Some(fn_name) => {
            let tests = inputs
                .iter()
                .zip(outputs)
                .map(|(i, o)| {
                    let args = match i {
                        Value::Array(args) => args.clone(),
                        other => vec![other.clone()],
                    };
                    let expected = match o {
                        Value::Array(one) if one.len() == 1 => one[0].clone(),
                        other => other.clone(),
                    };
                    CallTest { args, kwargs: Default::default(), expected }
                })
                .collect();
            let class = starter.contains("class Solution").then(|| "Solution".to_string());
            let prelude = if class.is_some() { LEETCODE_PRELUDE.to_owned() } else { String::new() };
            Ok((TestSpec::Call { entry_point: fn_name.into(), class_name: class, tests, comparator: ValueComparator::Exact }, prelude))
        }
    }
}

/// APPS / TACO: `question`, `solutions` (JSON list), `starter_code`, `input_output` (JSON).
pub fn apps_taco(row: usize, v: &Value) -> RowResult {
    let io = json_or_string(v, "input_output")?;
    let starter = v.get("starter_code").and_then(Value::as_str).unwrap_or_default();
    let (spec, prelude) = apps_tests(&io, starter, "input_output")?;
    let solutions = v.get("solutions").map(|_| json_or_string(v, "solutions")).transpose()?;
    let reference = solutions.as_ref().and_then(|s| s.as_array()).and_then(|a| a.first()).and_then(Value::as_str).map(str::to_owned);
    let source = v.get("source").and_then(Value::as_str).unwrap_or("taco").to_lowercase();
    let id = v.get("problem_id").or_else(|| v.get("id")).map_or_else(|| row.to_string(), text_of);
    let mut prompt = string(v, "question")?;
    if !starter.trim().is_empty() {
        prompt = format!("{prompt}\n\nStarter code:\n```python\n{starter}\n```");
    }
    Ok(Task { id: format!("{source}/{id}"), source: Some(source), prompt: Some(prompt), reference, prelude, released: None, spec, limits: Limits::default() })
}

/// CodeContests (deepmind/code_contests): `name`, `description`, `public_tests`,
/// `private_tests` (`{input: [..], output: [..]}`), `solutions` (`{language, solution}`, 3 =
/// Python 3), `time_limit` `{seconds, nanos}`. Generated tests are left out (hundreds per
/// problem; add them with a custom importer when wanted).
pub fn codecontests(row: usize, v: &Value) -> RowResult {
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for key in ["public_tests", "private_tests"] {
        let Some(tests) = v.get(key) else { continue };
        inputs.extend(strings(tests, "input").map_err(|(f, m)| (format!("{key}.{f}"), m))?);
        outputs.extend(strings(tests, "output").map_err(|(f, m)| (format!("{key}.{f}"), m))?);
    }
    let reference = v.get("solutions").and_then(|s| {
        let languages = s.get("language")?.as_array()?;
        let code = s.get("solution")?.as_array()?;
        languages.iter().zip(code).find(|(l, _)| l.as_i64() == Some(3)).and_then(|(_, c)| c.as_str()).map(str::to_owned)
    });
    let mut limits = Limits::default();
    if let Some(seconds) = v.pointer("/time_limit/seconds").and_then(Value::as_f64) {
        let nanos = v.pointer("/time_limit/nanos").and_then(Value::as_f64).unwrap_or(0.0);
        // Limits are set for C++; Python gets three times as long, and never less than the default.
        limits.time_s = limits.time_s.max(3.0 * (seconds + nanos / 1e9));
    }
    let name = v.get("name").and_then(Value::as_str).map_or_else(|| row.to_string(), |n| n.split('_').next().unwrap_or(n).to_owned());
    Ok(Task {
        id: format!("code_contests/{name}"),
        source: Some("code_contests".into()),
        prompt: Some(string(v, "description")?),
        reference,
        prelude: String::new(),
        released: None,
        spec: TestSpec::Stdio { tests: stdio_tests(&inputs, &outputs, "public_tests")?, comparator: TextComparator::Lines },
        limits,
    })
}

/// LiveCodeBench's test case lists (`[{input, output, testtype}]`) → tests, with `func_name`
/// for functional ones (one JSON argument per input line).
fn lcb_cases(cases: &[Value], func_name: Option<&str>, name: &str) -> Result<(TestSpec, String), (String, String)> {
    let functional = cases.iter().any(|c| c.get("testtype").and_then(Value::as_str) == Some("functional"));
    let get = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| err(name, format!("a case without `{k}`")));
    if !functional {
        let inputs = cases.iter().map(|c| get(c, "input")).collect::<Result<Vec<_>, _>>()?;
        let outputs = cases.iter().map(|c| get(c, "output")).collect::<Result<Vec<_>, _>>()?;
        return Ok((TestSpec::Stdio { tests: stdio_tests(&inputs, &outputs, name)?, comparator: TextComparator::Lines }, String::new()));
    }
    let func = func_name.ok_or_else(|| err("metadata", "functional tests need `func_name`"))?;
    let parse = |s: &str| dllm_verifier::exact_json::from_str::<Value>(s).map_err(|e| err(name, format!("`{s}` is not JSON: {e}")));
    let tests = cases
        .iter()
        .map(|c| {
            let args = get(c, "input")?.lines().filter(|l| !l.trim().is_empty()).map(parse).collect::<Result<Vec<_>, _>>()?;
            Ok(CallTest { args, kwargs: Default::default(), expected: parse(&get(c, "output")?)? })
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let spec = TestSpec::Call { entry_point: func.into(), class_name: Some("Solution".into()), tests, comparator: ValueComparator::Exact };
    Ok((spec, LEETCODE_PRELUDE.to_owned()))
}

/// A JSON list given as JSON, as a string of JSON, or as base64(zlib(pickle(JSON string))).
fn json_list_field(v: &Value, name: &str) -> Result<Vec<Value>, (String, String)> {
    let value = match field(v, name)? {
        Value::String(s) => match dllm_verifier::exact_json::from_str::<Value>(s) {
            Ok(parsed) => parsed,
            Err(_) => match decode_any(s).map_err(|e| err(name, e))? {
                Pickled::Str(json) => dllm_verifier::exact_json::from_str(&json).map_err(|e| err(name, format!("pickled text is not JSON: {e}")))?,
                Pickled::Dict(_) => return Err(err(name, "expected a pickled JSON string, found a dict")),
            },
        },
        other => other.clone(),
    };
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(err(name, "not a list")),
    }
}

/// LiveCodeBench as published on Hugging Face: `question_content`, `starter_code`,
/// `public_test_cases`, `private_test_cases` (JSON or base64-zlib-pickled), `metadata`.
pub fn livecodebench_hf(row: usize, v: &Value) -> RowResult {
    let mut cases = json_list_field(v, "public_test_cases")?;
    if v.get("private_test_cases").is_some_and(|p| !p.is_null()) {
        cases.extend(json_list_field(v, "private_test_cases")?);
    }
    let metadata = v.get("metadata").map(|_| json_or_string(v, "metadata")).transpose()?;
    let func = metadata.as_ref().and_then(|m| m.get("func_name")).and_then(Value::as_str);
    let (spec, prelude) = lcb_cases(&cases, func, "public_test_cases")?;
    let starter = v.get("starter_code").and_then(Value::as_str).unwrap_or_default();
    let mut prompt = string(v, "question_content")?;
    if !starter.trim().is_empty() {
        prompt = format!("{prompt}\n\nStarter code:\n```python\n{starter}\n```");
    }
    let platform = v.get("platform").and_then(Value::as_str).unwrap_or("lcb");
    let id = v.get("question_id").map_or_else(|| row.to_string(), text_of);
    Ok(Task {
        id: format!("livecodebench/{platform}/{id}"),
        source: Some("livecodebench".into()),
        prompt: Some(prompt),
        reference: None,
        prelude,
        released: release_date(v, "contest_date")?,
        spec,
        limits: Limits::default(),
    })
}

/// A date field as the datasets write it: `2023-08-21T00:00:00` (LiveCodeBench's JSON rows),
/// `2023-08-21 00:00:00 +00:00` (a Parquet timestamp), or `2023-08-21`; the day is kept.
fn release_date(v: &Value, name: &str) -> Result<Option<ReleaseDate>, (String, String)> {
    let text = match v.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(_) => return Err(err(name, "not a date string")),
    };
    let day = match text.char_indices().nth(10) {
        Some((i, 'T' | ' ')) => &text[..i],
        _ => text.as_str(),
    };
    day.parse().map(Some).map_err(|e| err(name, e))
}

/// DeepCoder-Preview (rllm): `problem`, `tests` whose shape depends on the source: a
/// `{inputs, outputs, fn_name?}` dict (taco, apps, code_contests), a list of `{input, output,
/// testtype}` (livecodebench), or a list of `{input, output, fn_name?}` (codeforces,
/// primeintellect).
pub fn deepcoder(row: usize, v: &Value) -> RowResult {
    let tests = json_or_string(v, "tests")?;
    let starter = v.get("starter_code").and_then(Value::as_str).unwrap_or_default();
    let metadata = v.get("metadata").map(|_| json_or_string(v, "metadata")).transpose()?;
    let (spec, prelude) = match &tests {
        Value::Object(_) => apps_tests(&tests, starter, "tests")?,
        Value::Array(cases) if cases.iter().any(|c| c.get("testtype").is_some()) => {
            let func = metadata.as_ref().and_then(|m| m.get("func_name")).and_then(Value::as_str);
            lcb_cases(cases, func, "tests")?
        }
        Value::Array(cases) => {
            let fn_name = cases.iter().find_map(|c| c.get("fn_name").and_then(Value::as_str)).map(str::to_owned);
            let pick = |k: &str| Value::Array(cases.iter().map(|c| c.get(k).cloned().unwrap_or(Value::Null)).collect());
            let mut io = serde_json::json!({ "inputs": pick("input"), "outputs": pick("output") });
            if let Some(f) = fn_name {
                io["fn_name"] = f.into();
            }
            apps_tests(&io, starter, "tests")?
        }
        _ => return Err(err("tests", "neither a dict nor a list")),
    };
    let source = v.get("data_source").or_else(|| v.get("source")).and_then(Value::as_str).unwrap_or("deepcoder").to_lowercase();
    let id = v.get("id").or_else(|| v.get("problem_id")).map_or_else(|| row.to_string(), text_of);
    Ok(Task {
        id: format!("deepcoder/{source}/{id}"),
        source: Some(source),
        prompt: Some(string(v, "problem")?),
        reference: None,
        prelude,
        released: None,
        spec,
        limits: Limits::default(),
    })
}

/// The verl layout (guru-RL code, Dream-Coder's RL set and most verl parquet sets): `prompt`
/// (chat messages; the last user turn is the statement), `data_source`,
/// `reward_model.ground_truth` (JSON: `{inputs, outputs}` stdio tests, `{functional}` assertion
/// code, or `{pytest}` a test file), `extra_info.index`.
pub fn verl(row: usize, v: &Value) -> RowResult {
    let statement = match field(v, "prompt")? {
        Value::String(s) => s.clone(),
        Value::Array(messages) => messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| err("prompt", "no user message"))?
            .to_owned(),
        _ => return Err(err("prompt", "neither text nor chat messages")),
    };
    let truth = v.pointer("/reward_model/ground_truth").ok_or_else(|| err("reward_model.ground_truth", "missing"))?;
    let truth = match truth {
        Value::String(s) => dllm_verifier::exact_json::from_str(s).map_err(|e| err("reward_model.ground_truth", format!("not JSON: {e}")))?,
        other => other.clone(),
    };
    let (spec, prelude) = if let Some(code) = truth.get("functional").and_then(Value::as_str) {
        let lines: Vec<String> = code.lines().map(str::to_owned).collect();
        let entry: Vec<String> = first_called_name(&lines).into_iter().collect();
        (TestSpec::Assert { entry_points: entry, class_names: vec![], test_setup: String::new(), test_code: code.to_owned() }, String::new())
    } else if let Some(code) = truth.get("pytest").and_then(Value::as_str) {
        (TestSpec::Pytest { entry_points: vec![], test_code: code.to_owned() }, String::new())
    } else {
        apps_tests(&truth, "", "reward_model.ground_truth")?
    };
    let source = v.get("data_source").and_then(Value::as_str).unwrap_or("verl").to_owned();
    let id = v.pointer("/extra_info/index").map_or_else(|| row.to_string(), text_of);
    Ok(Task { id: format!("{source}/{id}"), source: Some(source), prompt: Some(statement), reference: None, prelude, released: None, spec, limits: Limits::default() })
}
