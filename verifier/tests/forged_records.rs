//! What the judge makes of answers no honest harness gives, fed by a stand-in sandbox that
//! answers the trusted side's requests with exactly the lines under test.

use std::sync::Arc;

use dllm_verifier::sandbox::{Conversation, End, Job, Outcome};
use dllm_verifier::{Completion, Sandbox, SandboxError, TaskVerdict, Verifier};
use serde_json::{json, Value};

/// Says `loaded` with one function `f`, then answers the n-th request with `answers[n]`
/// (`{seq}` in it replaced by the request's number), or with `{"seq": n, "value": 2}` past them.
struct Replies {
    loaded: Value,
    answers: Vec<String>,
}

fn loaded_f() -> Value {
    json!({"loaded": true, "names": [["f", {"$handle": 0}]], "handles": [[0, {"kind": "callable", "name": "f"}]]})
}

impl Sandbox for Replies {
    fn name(&self) -> &'static str {
        "replies"
    }

    fn run(&self, _: &Job) -> Result<Outcome, SandboxError> {
        Ok(outcome())
    }

    fn converse(&self, _: &Job, mut c: Box<dyn Conversation>) -> (Result<Outcome, SandboxError>, Box<dyn Conversation>) {
        let mut request = c.answer(self.loaded.to_string().as_bytes());
        let mut n = 0;
        while let Some(r) = request {
            let seq = serde_json::from_slice::<Value>(&r).unwrap()["seq"].clone();
            let answer = self.answers.get(n).cloned().unwrap_or_else(|| r#"{"seq":{seq},"value":2}"#.into());
            request = c.answer(answer.replace("{seq}", &seq.to_string()).as_bytes());
            n += 1;
        }
        (Ok(outcome()), c)
    }
}

fn outcome() -> Outcome {
    Outcome { stdout: Vec::new(), stderr: Vec::new(), results: Vec::new(), malformed: false, end: End::Exited, seconds: 0.0 }
}

fn judge_with(loaded: Value, answers: &[&str], test_code: &str) -> TaskVerdict {
    let sandbox = Replies { loaded, answers: answers.iter().map(|a| a.to_string()).collect() };
    let verifier = Verifier::with_sandbox(Arc::new(sandbox), 1).unwrap();
    let task = json!({"id": "forged", "kind": "assert", "entry_points": ["f"], "test_code": test_code});
    let tasks = vec![verifier.prepare(serde_json::from_value(task).unwrap()).unwrap()];
    let completion = Completion { task: 0, text: "def f(x):\n    return 2 * x\n".into() };
    verifier.verify_batch(&tasks, &[completion], &|_| {}).remove(0)
}

fn judge(answers: &[&str]) -> TaskVerdict {
    judge_with(loaded_f(), answers, "assert f(1) == 2\nassert f(1) == 2\n")
}

#[test]
fn honest_answers_pass() {
    let v = judge(&[]);
    assert!(v.all_passed, "{v:?}");
}

#[test]
fn answers_out_of_step_void_the_run() {
    for forged in [
        // A repeated answer (the candidate wrote one of its own before the harness's).
        r#"{"seq":1,"value":2}"#,
        // Not the request's number, no number, not an object, not JSON, two objects.
        r#"{"seq":5,"value":2}"#,
        r#"{"value":2}"#,
        "[2]",
        "{\"seq\":{seq},\"value\":",
        r#"{"seq":{seq},"value":2} {"seq":{seq},"value":2}"#,
        // Values no harness writes: an unknown tag, a handle nobody described, one described twice.
        r#"{"seq":{seq},"value":{"$secret":1}}"#,
        r#"{"seq":{seq},"value":{"$handle":77}}"#,
        r#"{"seq":{seq},"value":2,"handles":[[0,{"kind":"object","class":0}]]}"#,
    ] {
        // The first answer is honest; the forged one answers the second request.
        let v = judge(&[r#"{"seq":{seq},"value":2}"#, forged]);
        assert!(!v.all_passed, "{forged}: {v:?}");
        assert!(v.tests.iter().all(|t| !t.verdict.passed()), "{forged}: one broken answer voids every test: {v:?}");
        assert_eq!(v.summary(), "runtime_error", "{forged}: {v:?}");
    }
}

#[test]
fn a_dict_repeating_one_known_pair_is_not_the_dict() {
    let code = "assert f(1) == {'a': 2, 'b': 1}\n";
    let v = judge_with(loaded_f(), &[r#"{"seq":{seq},"value":{"$dict":[["a",2],["a",2]]}}"#], code);
    assert_eq!(v.summary(), "wrong_answer", "{v:?}");
}

#[test]
fn a_candidate_stop_iteration_does_not_end_the_tests_loops() {
    // `all(map(...))` stops at a StopIteration: a candidate raising one would pass every check.
    let code = "assert all(map(lambda x: f(x) == 2 * x, [1, 2, 3]))\n";
    let v = judge_with(loaded_f(), &[r#"{"seq":{seq},"raise":"StopIteration","builtin":"StopIteration","message":""}"#], code);
    assert!(!v.all_passed, "{v:?}");
    let v = judge_with(loaded_f(), &[r#"{"seq":{seq},"raise":"SystemExit","builtin":"SystemExit","message":"0"}"#], code);
    assert!(!v.all_passed, "{v:?}");
}

#[test]
fn line_breaks_python_knows_inside_an_answer_are_part_of_it() {
    // `\r` is white space to JSON and U+2028 a character of its strings; a reader that takes
    // either for the end of a line splits the answer, and the rest, left in the trusted judge,
    // answered the next completion's tests.
    let answers = ["{\"seq\":{seq},\r\"value\":2}".to_owned(), "{\"seq\":{seq},\"value\":\"a\u{2028}\u{85}b\"}".to_owned()];
    let sandbox = Replies { loaded: loaded_f(), answers: answers.to_vec() };
    let verifier = Verifier::with_sandbox(Arc::new(sandbox), 1).unwrap();
    let task = json!({"id": "lines", "kind": "assert", "entry_points": ["f"], "test_code": "assert f(1) == 2\nassert f(1) == 'a\\u2028\\x85b'\n"});
    let tasks = vec![verifier.prepare(serde_json::from_value(task).unwrap()).unwrap()];
    for round in 0..3 {
        let completion = Completion { task: 0, text: "def f(x):\n    return 2 * x\n".into() };
        let v = verifier.verify_batch(&tasks, &[completion], &|_| {}).remove(0);
        assert!(v.all_passed, "round {round}: {v:?}");
    }
}
