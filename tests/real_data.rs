//! The verifier on real public problems (tests/data/shared, copied from shared/data by
//! scripts/fixtures): every reference solution passes on both backends, KodCode's own verdicts
//! on its model trials are reproduced, and stdio problems judge printed output strictly.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dllm_prompts::{import_file, Format};
use dllm_verifier::compare::text_matches;
use dllm_verifier::harness::TrustedJudge;
use dllm_verifier::native::default_python;
use dllm_verifier::{Backend, Completion, PreparedTask, Task, TestSpec, TextComparator, Verifier};
use serde_json::Value;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shared").join(file)
}

fn import(format: Format, file: &str) -> Vec<Task> {
    let imported = import_file(format, &data(file)).unwrap();
    assert!(imported.errors.is_empty(), "{file}: {:?}", imported.errors);
    imported.tasks
}

/// The KodCode tasks whose test files define the functions they test themselves: whatever a
/// completion says, they pass (KodCode's own run counts them as passed); `prompts import`
/// drops them, and the verifier gives every completion `task_error`.
const TESTS_WITH_THEIR_OWN_SOLUTION: [&str; 2] = ["kodcode/algorithm-00000041", "kodcode/algorithm-00000051"];

/// `tasks` less those whose tests cannot judge, as `prompts import` leaves them; checks that
/// those are the known ones.
fn judgeable(tasks: Vec<Task>) -> Vec<Task> {
    let trusted = TrustedJudge::new(&default_python());
    let (kept, dropped): (Vec<Task>, Vec<Task>) = tasks.into_iter().partition(|t| trusted.why_unjudgeable(t).unwrap().is_none());
    for t in &dropped {
        assert!(TESTS_WITH_THEIR_OWN_SOLUTION.contains(&t.id.as_str()), "{} dropped as unjudgeable", t.id);
    }
    kept
}

fn verifier(backend: Backend) -> &'static Verifier {
    static NATIVE: OnceLock<Verifier> = OnceLock::new();
    static WASM: OnceLock<Verifier> = OnceLock::new();
    let cell = if backend == Backend::Native { &NATIVE } else { &WASM };
    cell.get_or_init(|| Verifier::new(backend, 2).unwrap())
}

/// Judges each task's reference solution; returns the ids that did not pass, with why.
fn failing_references(backend: Backend, tasks: Vec<Task>) -> Vec<String> {
    let v = verifier(backend);
    let prepared: Vec<PreparedTask> = tasks.into_iter().map(|t| v.prepare(t).unwrap()).collect();
    let completions: Vec<Completion> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| Completion { task: i, text: p.task.reference.clone().expect("a reference solution") })
        .collect();
    v.verify_batch(&prepared, &completions, &|_| {})
        .into_iter()
        .filter(|r| !r.all_passed)
        .map(|r| format!("{} {}: {:?}", r.task_id, r.summary(), r.tests.iter().find(|t| !t.verdict.passed())))
        .collect()
}

fn reference_tasks() -> Vec<(&'static str, Vec<Task>)> {
    vec![
        ("mbpp", import(Format::SandboxfusionMbpp, "sandboxfusion/code_eval_mbpp.jsonl")),
        ("leetcode", import(Format::RllmLeetcode, "rllm/leetcode_test.json")),
        ("kodcode algorithm", judgeable(import(Format::Kodcode, "kodcode/algorithm_100_complete.json"))),
        ("kodcode prefill", judgeable(import(Format::Kodcode, "kodcode/prefill_200_complete.json"))),
        ("cruxeval", import(Format::SandboxfusionCruxeval, "sandboxfusion/code_eval_cruxeval.jsonl")),
    ]
}

#[test]
fn every_reference_solution_passes_natively() {
    for (name, tasks) in reference_tasks() {
        let n = tasks.len();
        let failing = failing_references(Backend::Native, tasks);
        assert!(failing.is_empty(), "{name}: {} of {n} references fail: {failing:#?}", failing.len());
    }
}

#[test]
fn every_reference_solution_passes_in_wasm() {
    for (name, tasks) in reference_tasks() {
        let n = tasks.len();
        let failing = failing_references(Backend::Wasm, tasks);
        assert!(failing.is_empty(), "{name}: {} of {n} references fail: {failing:#?}", failing.len());
    }
}

/// KodCode ran each model trial against the tests written with it (`trials.*.test_code`) and
/// recorded `pass_sequence`. Tasks are built per trial, with the trial's own tests.
fn kodcode_trials() -> Vec<(Task, String, bool)> {
    let mut out = Vec::new();
    for (file, subset) in [("kodcode/algorithm_100_complete.json", "algorithm"), ("kodcode/prefill_200_complete.json", "prefill")] {
        let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(data(file)).unwrap()).unwrap();
        for row in rows {
            let trials = row["trials"].as_object().unwrap();
            let verdicts = row["pass_sequence"].as_array().unwrap();
            assert_eq!(trials.len(), verdicts.len());
            for ((name, trial), verdict) in trials.iter().zip(verdicts) {
                let task = Task {
                    id: format!("kodcode/{subset}-{}#{name}", row["metadata"]["prompt_id"].as_str().unwrap()),
                    source: Some("kodcode".into()),
                    prompt: None,
                    reference: None,
                    prelude: String::new(),
                    released: None,
                    spec: TestSpec::Pytest { entry_points: vec![], test_code: trial["test_code"].as_str().unwrap().into() },
                    limits: Default::default(),
                };
                let code = trial["solution_code"].as_str().unwrap().to_owned();
                out.push((task, code, verdict.as_i64() == Some(1)));
            }
        }
    }
    out
}

fn kodcode_agreement(backend: Backend) {
    let trials = kodcode_trials();
    assert!(trials.len() > 250);
    let v = verifier(backend);
    let prepared: Vec<PreparedTask> = trials.iter().map(|(t, _, _)| v.prepare(t.clone()).unwrap()).collect();
    let completions: Vec<Completion> =
        trials.iter().enumerate().map(|(i, (_, code, _))| Completion { task: i, text: code.clone() }).collect();
    let verdicts = v.verify_batch(&prepared, &completions, &|_| {});
    // Trials of the tasks whose tests carry their own solution: KodCode passes them all; here
    // they judge nothing.
    let own_solution = |id: &str| TESTS_WITH_THEIR_OWN_SOLUTION.iter().any(|t| id.starts_with(&format!("{t}#")));
    let unjudged = verdicts.iter().zip(&trials).filter(|(v, t)| own_solution(&t.0.id) && v.task_error.is_some()).count();
    assert!(unjudged >= 3, "the trials whose tests carry their own solution judge nothing: {unjudged}");
    let disagreements: Vec<String> = verdicts
        .iter()
        .zip(&trials)
        .filter(|(got, (t, _, kodcode_passed))| got.all_passed != *kodcode_passed && !(own_solution(&t.id) && got.task_error.is_some()))
        .map(|(got, (t, _, expected))| format!("{}: KodCode {expected}, ours {} {:?}", t.id, got.summary(), got.tests))
        .collect();
    // Investigated: none remain. Trials KodCode failed include 14 whose own test files do not
    // parse (task_error here), wrong answers, and a timeout. One (prefill 00000027, trial 1)
    // returns `list(set(...))` of mixed strings and ints, whose order depends on the hash
    // seed: the sandbox fixes the seed (PYTHONHASHSEED=0; the wasm snapshot has its own fixed
    // one), so the verdict is stable, and it fails as in KodCode's run.
    assert!(disagreements.is_empty(), "{} disagreements: {disagreements:#?}", disagreements.len());
    let passed = verdicts.iter().filter(|v| v.all_passed).count();
    let judged = verdicts.iter().zip(&trials).filter(|(v, t)| t.2 && !(own_solution(&t.0.id) && v.task_error.is_some()));
    assert_eq!(passed, judged.count());
}

#[test]
fn kodcode_trial_verdicts_agree_natively() {
    kodcode_agreement(Backend::Native);
}

#[test]
fn kodcode_trial_verdicts_agree_in_wasm() {
    kodcode_agreement(Backend::Wasm);
}

#[test]
fn stdio_output_is_judged_per_test_and_strictly() {
    let tasks = import(Format::SandboxfusionCommonOj, "sandboxfusion/code_eval_code_contests.jsonl");
    assert_eq!(tasks.len(), 20);
    let v = verifier(Backend::Native);
    let prepared: Vec<PreparedTask> = tasks.into_iter().map(|t| v.prepare(t).unwrap()).collect();
    // A program that prints the expected output of the first test only, whatever its input.
    let mut completions = Vec::new();
    for (i, p) in prepared.iter().enumerate() {
        let TestSpec::Stdio { tests, .. } = &p.task.spec else { panic!("stdio task") };
        let first = &tests[0].stdout;
        completions.push(Completion { task: i, text: format!("import sys\nsys.stdout.write({first:?})\n") });
        // The same output in lower case: SandboxFusion's comparator would accept it; ours not.
        completions.push(Completion { task: i, text: format!("print({:?})\n", first.trim().to_lowercase()) });
    }
    let verdicts = v.verify_batch(&prepared, &completions, &|_| {});
    for (pair, p) in verdicts.chunks(2).zip(&prepared) {
        let TestSpec::Stdio { tests, .. } = &p.task.spec else { unreachable!() };
        let (exact, lower) = (&pair[0], &pair[1]);
        assert!(exact.tests[0].verdict.passed(), "{}: {:?}", p.task.id, exact.tests[0]);
        for (t, r) in tests.iter().zip(&exact.tests).skip(1) {
            // Another test passes only where its expected output equals the first one's.
            let same = text_matches(tests[0].stdout.as_bytes(), &t.stdout, TextComparator::Lines);
            assert_eq!(r.verdict.passed(), same, "{}: {:?}", p.task.id, r);
        }
        let has_letters = tests[0].stdout.chars().any(|c| c.is_ascii_uppercase());
        if has_letters {
            assert!(!lower.tests[0].verdict.passed(), "{}: lower-cased output accepted", p.task.id);
        }
    }
}

#[test]
fn every_shared_file_imports_without_a_bad_row() {
    let files = [
        (Format::SandboxfusionMbpp, "sandboxfusion/code_eval_mbpp.jsonl", 20),
        (Format::SandboxfusionCommonOj, "sandboxfusion/code_eval_code_contests.jsonl", 20),
        (Format::SandboxfusionLivecodebench, "sandboxfusion/code_eval_live_code_bench_v1.jsonl", 3),
        (Format::SandboxfusionCruxeval, "sandboxfusion/code_eval_cruxeval.jsonl", 20),
        (Format::RllmLeetcode, "rllm/leetcode_test.json", 200),
        (Format::RllmStdio, "rllm/code_contests_test.json", 165),
        (Format::Kodcode, "kodcode/algorithm_100_complete.json", 15),
        (Format::Kodcode, "kodcode/prefill_200_complete.json", 80),
    ];
    for (format, file, rows) in files {
        assert_eq!(import(format, file).len(), rows, "{file}");
    }
}

#[test]
fn livecodebench_pickled_tests_judge_real_solutions_and_refuse_the_exit_reference() {
    let tasks = import(Format::SandboxfusionLivecodebench, "sandboxfusion/code_eval_live_code_bench_v1.jsonl");
    let kinds: Vec<&str> = tasks.iter().map(|t| t.kind()).collect();
    assert_eq!(kinds, ["stdio", "call", "stdio"]);
    // The dataset's "reference" is `import sys; sys.exit(0)`: it must earn nothing.
    assert_eq!(failing_references(Backend::Native, tasks.clone()).len(), 3);
    let solutions = [
        "t = int(input())\nfor _ in range(t):\n    s = input().strip()\n    print('YES' if sum(a != b for a, b in zip(s, 'abc')) in (0, 2) else 'NO')\n",
        "```python\nclass Solution:\n    def countSeniors(self, details: List[str]) -> int:\n        return sum(int(d[11:13]) > 60 for d in details)\n```",
        "n = int(input())\ns = input().strip()\nt, a = s.count('T'), s.count('A')\nif t != a:\n    print('T' if t > a else 'A')\nelse:\n    print('T' if s[-1] == 'A' else 'A')\n",
    ];
    let v = verifier(Backend::Native);
    let prepared: Vec<PreparedTask> = tasks.into_iter().map(|t| v.prepare(t).unwrap()).collect();
    let completions: Vec<Completion> = solutions.iter().enumerate().map(|(i, s)| Completion { task: i, text: s.to_string() }).collect();
    for verdict in v.verify_batch(&prepared, &completions, &|_| {}) {
        assert!(verdict.all_passed, "{}: {:?}", verdict.task_id, verdict.tests.iter().find(|t| !t.verdict.passed()));
        assert!(verdict.tests.len() >= 2);
    }
}

/// The hard-coding signal on real solutions: the reference solutions and KodCode's model trials
/// compute their answers, so none may be flagged (a false signal buries real ones in the audit).
#[test]
fn real_solutions_are_not_taken_for_hard_coded_tests() {
    let mut flagged = Vec::new();
    let mut checked = 0;
    for (_, tasks) in reference_tasks() {
        for task in tasks {
            let code = task.reference.clone().unwrap();
            checked += 1;
            if let Some(s) = dllm_rewards::test_data_in_code(&code, &task.spec) {
                flagged.push(format!("{}: {}", task.id, s.reason));
            }
        }
    }
    for (task, code, _) in kodcode_trials() {
        checked += 1;
        if let Some(s) = dllm_rewards::test_data_in_code(&code, &task.spec) {
            flagged.push(format!("{}: {}", task.id, s.reason));
        }
    }
    assert!(checked > 500, "{checked}");
    assert!(flagged.is_empty(), "{} of {checked} flagged:\n{}", flagged.len(), flagged.join("\n"));
}
