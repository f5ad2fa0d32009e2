//! A completion that breaks the sandbox answers for it: crashing the native fork-server with
//! thousands of nested folders used to end as `sandbox_error`, which training leaves out of the
//! update (a learnable dodge of a 0 reward). And nothing a run writes survives it: /tmp and
//! /dev/shm are empty at the start of every native run, and filling them harms nobody after.

mod judging;

use dllm_verifier::{Backend, Completion, Task, TaskVerdict, Verifier};
use serde_json::json;

fn task(kind: &str) -> Task {
    let value = match kind {
        "stdio" => json!({"id": "stdio", "kind": "stdio", "tests": [{"stdin": "3\n", "stdout": "9\n"}], "limits": {"time_s": 5.0}}),
        _ => json!({"id": "assert", "kind": "assert", "entry_points": ["f"], "test_code": "assert f(3) == 9\n", "limits": {"time_s": 5.0}}),
    };
    serde_json::from_value(value).unwrap()
}

const HONEST_STDIO: &str = "x = int(input())\nprint(x * x)\n";
const HONEST_CALL: &str = "def f(x):\n    return x * x\n";

fn judge(verifier: &Verifier, kind: &str, codes: &[String]) -> Vec<TaskVerdict> {
    let tasks = vec![verifier.prepare(task(kind)).unwrap()];
    let completions: Vec<Completion> = codes.iter().map(|c| Completion { task: 0, text: format!("```python\n{c}\n```") }).collect();
    verifier.verify_batch(&tasks, &completions, &|_| {})
}

/// Prefixes a candidate with module-level code that runs before it.
fn with(prefix: &str, code: &str) -> String {
    format!("{prefix}\n{code}")
}

fn nested_folders(backend: Backend) {
    let verifier = Verifier::new(backend, 1).unwrap();
    let deep = "import os\nfor i in range(1500):\n    try:\n        os.mkdir('d')\n        os.chdir('d')\n    except OSError:\n        break\n";
    for (kind, honest) in [("stdio", HONEST_STDIO), ("assert", HONEST_CALL)] {
        let verdicts = judge(&verifier, kind, &[with(deep, honest), with(deep, "x = 1"), honest.to_string()]);
        for v in &verdicts {
            assert!(!v.sandbox_error, "{backend:?} {kind}: nested folders spoiled the sandbox: {v:?}");
        }
        assert!(verdicts[0].all_passed, "{backend:?} {kind}: {:?}", verdicts[0]);
        assert!(!verdicts[1].all_passed, "{backend:?} {kind}: {:?}", verdicts[1]);
        assert!(verdicts[2].all_passed, "{backend:?} {kind}: the next run after them: {:?}", verdicts[2]);
    }
}

#[test]
fn native_nested_folders_break_nothing() {
    nested_folders(Backend::Native);
}

#[test]
fn wasm_nested_folders_break_nothing() {
    nested_folders(Backend::Wasm);
}

/// A completion that kills the sandbox machinery itself (the native fork-server, here: its
/// children run as another uid only when the verifier is root, so as a plain user they can
/// signal it) is judged twice, then charged: a `runtime_error`, not a `sandbox_error`.
#[test]
fn a_completion_that_kills_the_fork_server_is_charged() {
    let verifier = Verifier::new(Backend::Native, 1).unwrap();
    // As root the child cannot signal the server (another uid): it kills every process it may.
    let killer = "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\nos.kill(-1, signal.SIGKILL)\n";
    for kind in ["stdio", "assert"] {
        let verdicts = judge(&verifier, kind, &[killer.to_string(), if kind == "stdio" { HONEST_STDIO } else { HONEST_CALL }.to_string()]);
        let v = &verdicts[0];
        assert!(!v.all_passed && !v.sandbox_error, "{kind}: {v:?}");
        assert!(verdicts[1].all_passed, "{kind}: the sandbox recovers for the next run: {:?}", verdicts[1]);
    }
}

fn nothing_survives_a_run(backend: Backend) {
    let verifier = Verifier::new(backend, 1).unwrap();
    let places = ["/tmp", "/var/tmp", "/dev/shm", "."];
    let write = format!(
        "import os\nfor d in {places:?}:\n    try:\n        with open(os.path.join(d, 'dllm-rl-marker'), 'w') as f:\n            f.write('left by an earlier run')\n    except OSError:\n        pass\n"
    );
    let read = format!(
        "import os\nseen = [d for d in {places:?} if os.path.exists(os.path.join(d, 'dllm-rl-marker'))]\n\
         def f(x):\n    return -1 if seen else x * x\nif __name__ == '__main__':\n    print(seen or int(input()) ** 2)\n"
    );
    // Filling the scratch space must not make the next honest run fail.
    let fill = "import os\nfor d in ['/tmp', '/dev/shm']:\n    try:\n        with open(os.path.join(d, 'fill'), 'wb') as f:\n            for _ in range(4096):\n                f.write(b'x' * (1 << 20))\n    except OSError:\n        pass\n";
    // Native only: a SysV shared-memory segment left for the next run (no ctypes in wasm).
    let shm = "import ctypes
libc = ctypes.CDLL(None, use_errno=True)
";
    let plant = format!("{shm}libc.shmget(0x5d11, 1 << 20, 0o1666)
");
    let probe = format!("{shm}seen = libc.shmget(0x5d11, 0, 0) >= 0
def f(x):
    return -1 if seen else x * x
if __name__ == '__main__':
    print(-1 if seen else int(input()) ** 2)
");
    for kind in ["stdio", "assert"] {
        if backend == Backend::Native {
            let verdicts = judge(&verifier, kind, &[with(&plant, "x = 1"), probe.clone()]);
            assert!(verdicts[1].all_passed, "{backend:?} {kind}: a run saw another's SysV segment: {:?}", verdicts[1]);
        }
        let codes = [with(&write, "x = 1"), read.clone(), with(fill, "x = 1"), read.clone()];
        let verdicts = judge(&verifier, kind, &codes);
        assert!(verdicts[1].all_passed, "{backend:?} {kind}: a run saw what an earlier one wrote: {:?}", verdicts[1]);
        assert!(verdicts[3].all_passed, "{backend:?} {kind}: after a run filled the scratch space: {:?}", verdicts[3]);
        assert!(verdicts.iter().all(|v| !v.sandbox_error), "{backend:?} {kind}: {verdicts:?}");
    }
}

#[test]
fn native_nothing_a_run_writes_survives_it() {
    let sandbox = dllm_verifier::NativeSandbox::new(Default::default()).unwrap();
    if !sandbox.fresh_scratch() {
        eprintln!("skipped: no mount namespaces here, so no fresh scratch per run (documented)");
        return;
    }
    nothing_survives_a_run(Backend::Native);
}

#[test]
fn wasm_nothing_a_run_writes_survives_it() {
    nothing_survives_a_run(Backend::Wasm);
}

#[test]
fn limits_no_sandbox_can_apply_are_errors_naming_the_task_and_the_field() {
    let verifier = Verifier::new(Backend::Native, 1).unwrap();
    for (limits, field) in [(json!({"time_s": -1.0}), "time_s"), (json!({"time_s": 1e300}), "time_s"), (json!({"memory_mb": 0}), "memory_mb")] {
        let task: Task = serde_json::from_value(json!({"id": "bad/1", "kind": "stdio", "tests": [], "limits": limits})).unwrap();
        let err = verifier.prepare(task).unwrap_err();
        let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ");
        assert!(chain.contains("bad/1") && chain.contains(&format!("limits.{field}")), "{chain}");
    }
}

/// An entry point that is missing, or is not what the tests call (`solve = 5`), is the
/// candidate's failure as in a call task (`runtime_error`), never a `task_error`, which
/// training leaves out like a sandbox error; a data entry point the tests compare judges.
fn entry_points_that_are_not_functions(backend: Backend) {
    let verifier = Verifier::new(backend, 1).unwrap();
    let task = |kind: &str, code: &str| {
        json!({"id": "e", "kind": kind, "entry_points": if kind == "assert" { json!(["solve"]) } else { json!([]) }, "test_code": code, "limits": {"time_s": 2.0}})
    };
    let asserted = task("assert", "assert solve(1) == 2\nassert solve(2) == 4\n");
    let pytest = task("pytest", "from solution import solve\n\ndef test_one():\n    assert solve(1) == 2\n");
    let by_module = task("pytest", "import solution\n\ndef test_one():\n    assert solution.solve(1) == 2\n");
    for (name, t) in [("assert", asserted), ("pytest", pytest), ("import solution", by_module)] {
        let codes = ["def solve(x):\n    return 2 * x\n", "solve = 5\n", "def other(x):\n    return 2 * x\n", "solve = None\n", "class solve:\n    pass\n"];
        let verdicts = judging::judge_on(&verifier, t, &codes);
        assert!(verdicts[0].all_passed, "{backend:?} {name}: {:?}", verdicts[0]);
        for v in &verdicts[1..] {
            assert_eq!(v.summary(), "runtime_error", "{backend:?} {name}: {v:?}");
            assert!(v.task_error.is_none() && !v.sandbox_error, "{backend:?} {name}: {v:?}");
        }
    }
    let constant = json!({"id": "c", "kind": "assert", "entry_points": ["LIMIT"], "test_code": "assert LIMIT == 10\n"});
    let verdicts = judging::judge_on(&verifier, constant, &["LIMIT = 10\n", "LIMIT = 11\n"]);
    assert!(verdicts[0].all_passed, "{backend:?}: {:?}", verdicts[0]);
    assert_eq!(verdicts[1].summary(), "wrong_answer", "{backend:?}: {:?}", verdicts[1]);
}

#[test]
fn native_entry_points_that_are_not_functions_are_the_candidates_failure() {
    entry_points_that_are_not_functions(Backend::Native);
}

#[test]
fn wasm_entry_points_that_are_not_functions_are_the_candidates_failure() {
    entry_points_that_are_not_functions(Backend::Wasm);
}

/// What Python reads as a line break besides `\n` (`\r`, `\x0b`, `\x0c`, `\x1c`-`\x1e`,
/// `\x85`, `\u2028`, `\u2029`), in a candidate's answers, its output, or its own raw line to
/// the trusted side, never puts the trusted judge out of step: the completion gets its verdict,
/// and the honest completion judged after it on the same judge passes.
fn line_separators(backend: Backend) {
    let verifier = Verifier::new(backend, 1).unwrap();
    let seps = r"\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029";
    let task = json!({"id": "s", "kind": "pytest", "limits": {"time_s": 2.0}, "test_code": format!(
        "from solution import f\n\ndef test_value():\n    assert f(1) == 'a{seps}b'\n\ndef test_printed(capsys):\n    f(2)\n    assert capsys.readouterr().out == 'a{seps}b\\n'\n")});
    let answers = format!("def f(x):\n    s = 'a{seps}b'\n    if x == 2:\n        print(s)\n    return s\n");
    // Its own line to the trusted side, with `\r` as JSON white space (the harness's answer
    // follows it, out of step: the run is void), by fd 3 (native) or the host door (wasm).
    let raw = "import os\ndef f(x):\n    line = b'{\"seq\":1,\\r\"value\":\"a\\xe2\\x80\\xa8b\"}'\n    try:\n        import _host\n        _host.call(line)\n    except ImportError:\n        \
               os.write(3, line + b'\\n')\n    return 'a'\n";
    let honest = "def f(x):\n    return 2 * x\n";
    let simple = json!({"id": "h", "kind": "assert", "entry_points": ["f"], "test_code": "assert f(1) == 2\nassert f(2) == 4\n", "limits": {"time_s": 2.0}});
    for (name, t, code) in [("separators in answers", task.clone(), answers.as_str()), ("a raw line", task, raw)] {
        let first = judging::judge_on(&verifier, t, &[code]).remove(0);
        assert!(!first.sandbox_error && first.task_error.is_none(), "{backend:?} {name}: {first:?}");
        assert_eq!(first.all_passed, name != "a raw line", "{backend:?} {name}: {first:?}");
        let next = judging::judge_on(&verifier, simple.clone(), &[honest]).remove(0);
        assert!(next.all_passed && !next.sandbox_failure_charged, "{backend:?} after {name}: {next:?}");
    }
}

#[test]
fn native_line_separators_keep_the_trusted_judge_in_step() {
    line_separators(Backend::Native);
}

#[test]
fn wasm_line_separators_keep_the_trusted_judge_in_step() {
    line_separators(Backend::Wasm);
}
