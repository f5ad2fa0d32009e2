//! `fail_fast`: a completion's tests stop at its first failure, the rest are `not_run`; without
//! it every test is judged. Passing completions get the same verdicts either way.

use dllm_verifier::{Backend, Completion, Task, TaskVerdict, Verifier};

fn tasks() -> Vec<Task> {
    let stdio = r#"{"id":"double","kind":"stdio","tests":[
        {"stdin":"1\n","stdout":"2\n"},{"stdin":"2\n","stdout":"4\n"},{"stdin":"3\n","stdout":"6\n"}]}"#;
    let call = r#"{"id":"twice","kind":"call","entry_point":"f","limits":{"time_s":0.3},
        "tests":[{"args":[1],"expected":2},{"args":[2],"expected":4},{"args":[3],"expected":6}]}"#;
    [stdio, call].iter().map(|t| serde_json::from_str(t).expect("valid task")).collect()
}

fn names(v: &TaskVerdict) -> Vec<&'static str> {
    v.tests.iter().map(|t| t.verdict.name()).collect()
}

#[test]
fn the_first_failure_ends_a_completions_runs() {
    let completions = [
        // Wrong on the second stdio test only.
        Completion { task: 0, text: "x = int(input())\nprint(0 if x == 2 else 2 * x)\n".into() },
        // Hangs on the first call test only: without fail_fast the next tests get a fresh run.
        Completion { task: 1, text: "def f(x):\n    while x == 1:\n        pass\n    return 2 * x\n".into() },
        Completion { task: 0, text: "print(2 * int(input()))\n".into() },
        Completion { task: 1, text: "def f(x):\n    return 2 * x\n".into() },
    ];
    let all = Verifier::new(Backend::Native, 2).unwrap();
    let fast = Verifier::new(Backend::Native, 2).unwrap().with_fail_fast(true);
    let prepared = |v: &Verifier| tasks().into_iter().map(|t| v.prepare(t).unwrap()).collect::<Vec<_>>();
    let every = all.verify_batch(&prepared(&all), &completions, &|_| {});
    let stopped = fast.verify_batch(&prepared(&fast), &completions, &|_| {});

    assert_eq!(names(&every[0]), ["passed", "wrong_answer", "passed"]);
    assert_eq!(names(&stopped[0]), ["passed", "wrong_answer", "not_run"]);
    assert_eq!(names(&every[1]), ["timeout", "passed", "passed"]);
    assert_eq!(names(&stopped[1]), ["timeout", "not_run", "not_run"]);
    for (a, b) in every[..2].iter().zip(&stopped[..2]) {
        // The task-level verdict and reward inputs that a pass/fail reward reads agree.
        assert_eq!((a.summary(), a.all_passed), (b.summary(), b.all_passed));
        assert!(b.tests.iter().filter(|t| t.verdict.name() == "not_run").all(|t| t.seconds == 0.0));
    }
    for (a, b) in every[2..].iter().zip(&stopped[2..]) {
        assert!(a.all_passed && b.all_passed, "{a:?} / {b:?}");
        assert_eq!(names(a), names(b));
    }
}
