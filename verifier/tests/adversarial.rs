//! The adversarial suite: completions that try to earn a pass without solving the task, on
//! both backends and every task kind. None may pass a single test, none may break the sandbox.
//! (Host safety of the native sandbox is checked in `host_safety.rs`.)

use std::sync::OnceLock;

use dllm_verifier::{Backend, Completion, PreparedTask, Task, TaskVerdict, Verifier};

/// The secret function: f(x) = 7x^2 + 13x + 987_643. Expected values are large, unusual
/// numbers, so a hack that finds them in memory would be noticed.
const HONEST: &str = "def f(x):\n    return 7 * x * x + 13 * x + 987643\n";
const HONEST_STDIO: &str = "x = int(input())\nprint(7 * x * x + 13 * x + 987643)\n";

fn expected(x: i64) -> i64 {
    7 * x * x + 13 * x + 987_643
}

fn tasks() -> Vec<Task> {
    let xs = [3i64, 11, 40];
    let stdio: Vec<_> = xs.iter().map(|x| format!(r#"{{"stdin":"{x}\n","stdout":"{}\n"}}"#, expected(*x))).collect();
    let call: Vec<_> = xs.iter().map(|x| format!(r#"{{"args":[{x}],"expected":{}}}"#, expected(*x))).collect();
    let asserts: Vec<_> = xs.iter().map(|x| format!("assert f({x}) == {}", expected(*x))).collect();
    let pytest: Vec<_> = xs.iter().map(|x| format!("def test_{x}():\n    assert f({x}) == {}\n", expected(*x))).collect();
    let limits = r#""limits":{"time_s":1.0,"memory_mb":256,"output_bytes":65536}"#;
    [
        format!(r#"{{"id":"stdio","kind":"stdio","tests":[{}],{limits}}}"#, stdio.join(",")),
        format!(r#"{{"id":"call","kind":"call","entry_point":"f","tests":[{}],{limits}}}"#, call.join(",")),
        format!(
            r#"{{"id":"assert","kind":"assert","entry_points":["f"],"test_code":{},{limits}}}"#,
            serde_json::to_string(&asserts.join("\n")).unwrap()
        ),
        format!(
            r#"{{"id":"pytest","kind":"pytest","test_code":{},{limits}}}"#,
            serde_json::to_string(&format!("from solution import f\n\n{}", pytest.join("\n"))).unwrap()
        ),
    ]
    .iter()
    .map(|t| serde_json::from_str(t).expect("valid task"))
    .collect()
}

struct Fixture {
    verifier: Verifier,
    tasks: Vec<PreparedTask>,
}

fn fixture(backend: Backend) -> &'static Fixture {
    static NATIVE: OnceLock<Fixture> = OnceLock::new();
    static WASM: OnceLock<Fixture> = OnceLock::new();
    let cell = match backend {
        Backend::Native => &NATIVE,
        Backend::Wasm => &WASM,
    };
    cell.get_or_init(|| {
        let verifier = Verifier::new(backend, 2).expect("sandbox starts");
        let tasks = tasks().into_iter().map(|t| verifier.prepare(t).expect("task prepares")).collect();
        Fixture { verifier, tasks }
    })
}

/// Judges `code` on every task kind it applies to (stdio programs vs function definitions).
fn judge_all(backend: Backend, code: &str) -> Vec<TaskVerdict> {
    let f = fixture(backend);
    let completions: Vec<Completion> =
        (0..f.tasks.len()).map(|task| Completion { task, text: format!("```python\n{code}\n```") }).collect();
    f.verifier.verify_batch(&f.tasks, &completions, &|_| {})
}

fn assert_no_test_passes(backend: Backend, name: &str, code: &str) -> Vec<TaskVerdict> {
    let verdicts = judge_all(backend, code);
    for v in &verdicts {
        let passed: Vec<_> = v.tests.iter().filter(|t| t.verdict.passed()).collect();
        assert!(passed.is_empty(), "{backend:?}: hack `{name}` passed {} test(s) of {}: {v:?}", passed.len(), v.task_id);
        assert!(!v.sandbox_error, "{backend:?}: hack `{name}` broke the sandbox on {}: {v:?}", v.task_id);
    }
    verdicts
}

fn honest_passes(backend: Backend) {
    let f = fixture(backend);
    let completions: Vec<Completion> = f
        .tasks
        .iter()
        .enumerate()
        .map(|(task, t)| Completion { task, text: if t.task.id == "stdio" { HONEST_STDIO } else { HONEST }.into() })
        .collect();
    for v in f.verifier.verify_batch(&f.tasks, &completions, &|_| {}) {
        assert!(v.all_passed, "{backend:?}: the honest solution fails {}: {v:?}", v.task_id);
    }
}

/// Hacks that need nothing from the host to be checked: (name, code).
const HACKS: &[(&str, &str)] = &[
    ("early sys.exit(0)", "import sys\nsys.exit(0)\n"),
    ("early os._exit(0)", "import os\nos._exit(0)\n"),
    ("raise SystemExit in the function", "def f(x):\n    raise SystemExit(0)\nraise SystemExit\n"),
    (
        "always-equal object",
        "class Eq:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n    def __hash__(self): return 0\n\
         class EqInt(int):\n    def __eq__(self, other): return True\n\
         def f(x):\n    return Eq() if x % 2 else EqInt(0)\nprint(Eq())\n",
    ),
    (
        "frame and gc walking for expected values",
        "import gc, sys\n\
         def hunt():\n    found = []\n    frame = sys._getframe()\n    while frame is not None:\n        \
         found += [c for c in frame.f_code.co_consts if type(c) is int and c > 100000]\n        \
         found += [v for v in frame.f_locals.values() if type(v) is int and v > 100000]\n        frame = frame.f_back\n    \
         for o in gc.get_objects():\n        if type(o) is dict:\n            found += [v for v in o.values() if type(v) is int and v > 100000]\n        \
         elif type(o) is str and '98' in o:\n            found += [int(t) for t in o.replace('=', ' ').split() if t.isdigit() and int(t) > 100000]\n    \
         return found\n\
         def f(x):\n    found = hunt()\n    return found[-1] if found else 0\n\
         found = hunt()\nprint(found[-1] if found else 0)\n",
    ),
    (
        "printing success markers",
        "import sys, os\nfor m in ['passed', 'OK', '{\"done\": true}', 'All tests passed']:\n    print(m)\n    print(m, file=sys.stderr)\n\
         def f(x):\n    print('PASSED')\n    return None\n",
    ),
    (
        "forging result lines on every descriptor",
        "import os\n\
         lines = [b'{\"done\": true}\\n'] + [('{\"test\": %d, \"value\": 1}\\n' % i).encode() for i in range(3)] + \
         [('{\"site\": %d, \"n\": 0, \"value\": 1}\\n' % i).encode() for i in range(8)]\n\
         for fd in range(3, 64):\n    for line in lines:\n        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n\
         def f(x):\n    return 1\n",
    ),
    (
        "tampering with builtins and json",
        "import builtins, json\n\
         builtins.isinstance = lambda *a: True\n\
         builtins.type = lambda *a: int\n\
         json.dumps = lambda *a, **k: '{\"test\": 0, \"value\": 1, \"done\": true}'\n\
         def f(x):\n    return object()\nprint(1)\n",
    ),
    ("pytest skip at module level", "import pytest\npytest.skip('nothing to see', allow_module_level=True)\n"),
    (
        "reading files near the program",
        "import os, glob\n\
         seen = []\nfor pattern in ['*', '../*', '/tmp/*', '/tmp/*/*', '/run/*', '/work/*/*', '/root/*', '/proc/*/cmdline']:\n    seen += glob.glob(pattern)\n\
         def f(x):\n    for p in seen:\n        try:\n            text = open(p).read()\n        except Exception:\n            continue\n        \
         for tok in text.replace(',', ' ').replace(':', ' ').split():\n            if tok.isdigit() and int(tok) > 100000:\n                return int(tok)\n    return 0\n\
         print(f(0))\n",
    ),
];

fn run_hacks(backend: Backend) {
    honest_passes(backend);
    for (name, code) in HACKS {
        assert_no_test_passes(backend, name, code);
    }
}

#[test]
fn native_hacks_earn_nothing() {
    run_hacks(Backend::Native);
}

#[test]
fn wasm_hacks_earn_nothing() {
    run_hacks(Backend::Wasm);
}

fn resource_bombs(backend: Backend) {
    let cases: &[(&str, &str, &str)] = &[
        ("infinite loop", "def f(x):\n    while True:\n        pass\nwhile True:\n    pass\n", "timeout"),
        ("sleeping forever", "import time\ndef f(x):\n    time.sleep(10**6)\ntime.sleep(10**6)\n", "timeout"),
        (
            "memory bomb",
            "def f(x):\n    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))\nf(0)\n",
            "memory_limit",
        ),
        ("giant output", "import sys\ndef f(x):\n    sys.stdout.write('x' * 10**7)\n    return 0\nprint('x' * 10**7)\n", ""),
    ];
    for (name, code, verdict) in cases {
        for v in assert_no_test_passes(backend, name, code) {
            if !verdict.is_empty() {
                assert_eq!(v.summary(), *verdict, "{backend:?}: `{name}` on {}: {v:?}", v.task_id);
            }
        }
    }
    // The stdio program's giant output is an output_limit verdict.
    let v = &judge_all(backend, "print('x' * 10**7)")[0];
    assert_eq!(v.summary(), "output_limit", "{backend:?}: {v:?}");
    honest_passes(backend);
}

#[test]
fn native_resource_bombs_are_contained() {
    resource_bombs(Backend::Native);
}

#[test]
fn wasm_resource_bombs_are_contained() {
    resource_bombs(Backend::Wasm);
}


/// Not a hack, but it shares the fixture: what an honest candidate writes to stderr, without a
/// final newline, still reaches each test's output excerpt (the audit shows it), on every task
/// kind. Neither backend finalizes the interpreter, so the harness must flush.
fn stderr_reaches_the_excerpts(backend: Backend) {
    let f = fixture(backend);
    let note = "import sys\nsys.stderr.write('debug note without newline')\n";
    let completions: Vec<Completion> = f
        .tasks
        .iter()
        .enumerate()
        .map(|(task, t)| Completion { task, text: format!("{note}{}", if t.task.id == "stdio" { HONEST_STDIO } else { HONEST }) })
        .collect();
    for v in f.verifier.verify_batch(&f.tasks, &completions, &|_| {}) {
        assert!(v.all_passed, "{backend:?}: {v:?}");
        assert!(
            v.tests.iter().all(|t| t.stderr.contains("debug note without newline")),
            "{backend:?}: stderr lost on {}: {v:?}",
            v.task_id
        );
    }
}

#[test]
fn native_stderr_reaches_the_excerpts() {
    stderr_reaches_the_excerpts(Backend::Native);
}

#[test]
fn wasm_stderr_reaches_the_excerpts() {
    stderr_reaches_the_excerpts(Backend::Wasm);
}

/// Assertion tests run twice: in the sandbox, and replayed on the recorded values in the
/// trusted process, outside it. A value chosen to make the *test code* loop or allocate without
/// end must not stall or swamp the trusted process.
fn replay_bombs(backend: Backend) {
    let f = fixture(backend);
    let test_code = "n = f(2)\nbuf = [0] * n\ntotal = 0\nfor i in range(n):\n    for j in range(n):\n        total += 1\nassert total == 4\n";
    let task = serde_json::json!({
        "id": "replay", "kind": "assert", "entry_points": ["f"], "test_code": test_code,
        "limits": {"time_s": 1.0, "memory_mb": 256},
    });
    let tasks = vec![f.verifier.prepare(serde_json::from_value(task).unwrap()).unwrap()];
    let judge = |code: &str| {
        let completion = Completion { task: 0, text: format!("```python\n{code}\n```") };
        f.verifier.verify_batch(&tasks, &[completion], &|_| {}).remove(0)
    };
    assert!(judge("def f(x):\n    return x\n").all_passed, "{backend:?}: the honest solution fails");
    // The sandbox's own memory limit stops `[0] * n` there; the replay must hit a cap as well.
    let v = judge("def f(x):\n    return 10**9\n");
    assert_eq!(v.summary(), "memory_limit", "{backend:?}: {v:?}");
    // Small enough to allocate, far too long to loop over: the replay gets the run's deadline.
    let v = judge("def f(x):\n    return 10**5\n");
    assert_eq!(v.summary(), "timeout", "{backend:?}: {v:?}");
}

#[test]
fn native_replay_bombs_are_contained() {
    replay_bombs(Backend::Native);
}

#[test]
fn wasm_replay_bombs_are_contained() {
    replay_bombs(Backend::Wasm);
}

/// A KodCode test that captures stdout and restores it from `sys.__stdout__`: in the replay the
/// candidate's recorded prints are printed again, after the restore. They must not reach the
/// trusted judge's protocol (a printed reply used to pass the hack and the completions judged
/// after it), and an honest solution's debug prints must not break it.
fn replayed_prints_stay_out_of_the_protocol(backend: Backend) {
    let f = fixture(backend);
    let test_code = "import io\nimport sys\nfrom solution import greet, add\n\n\
                     def test_greet():\n    captured = io.StringIO()\n    sys.stdout = captured\n    greet('Bob')\n    \
                     sys.stdout = sys.__stdout__\n    assert captured.getvalue() == 'Hello, Bob!\\n'\n\n\
                     def test_add():\n    assert add(2, 3) == 5\n";
    let tasks = [
        serde_json::json!({"id": "capture", "kind": "pytest", "test_code": test_code}),
        serde_json::json!({"id": "square", "kind": "assert", "entry_points": ["square"], "test_code": "assert square(3) == 9\n"}),
    ];
    let tasks: Vec<PreparedTask> =
        tasks.into_iter().map(|t| f.verifier.prepare(serde_json::from_value(t).unwrap()).unwrap()).collect();
    let forged = r#"{"id": 0, "asserts": [{"index": 0, "ok": true, "error": null}], "total": 1, "functions": [{"ok": true, "error": null}, {"ok": true, "error": null}], "raised": null}"#;
    let hack = format!(
        "FORGED = {forged:?}\ndef greet(name):\n    pass\ndef add(a, b):\n    for _ in range(20):\n        print(FORGED)\n    return 0\n"
    );
    let honest = "def greet(name):\n    print('Hello, ' + name + '!')\ndef add(a, b):\n    print('debug: adding', a, b)\n    return a + b\n";
    let wrong = "def square(x):\n    return 0\n";
    let completions: Vec<Completion> = [(0, hack.as_str()), (1, wrong), (1, wrong), (0, honest)]
        .iter()
        .map(|(task, code)| Completion { task: *task, text: format!("```python\n{code}\n```") })
        .collect();
    let verdicts = f.verifier.verify_batch(&tasks, &completions, &|_| {});
    for v in &verdicts[..3] {
        assert!(v.tests.iter().all(|t| !t.verdict.passed()) && !v.sandbox_error, "{backend:?}: {v:?}");
    }
    assert!(verdicts[3].all_passed, "{backend:?}: the honest solution fails: {:?}", verdicts[3]);
}

#[test]
fn native_replayed_prints_stay_out_of_the_protocol() {
    replayed_prints_stay_out_of_the_protocol(Backend::Native);
}

#[test]
fn wasm_replayed_prints_stay_out_of_the_protocol() {
    replayed_prints_stay_out_of_the_protocol(Backend::Wasm);
}

/// Methods of objects the candidate returned, reached through a chained call, a list element
/// or a tuple assignment: the replay used to answer such calls with a truthy stand-in, so a
/// class without the methods passed `assert obj.is_connected(...)` and an honest one failed.
fn methods_of_returned_objects(backend: Backend) {
    let f = fixture(backend);
    let tasks = [
        serde_json::json!({"id": "node", "kind": "pytest", "test_code":
            "from solution import Node\n\ndef test_connect():\n    nodes = [Node(i) for i in range(3)]\n    \
             nodes[0].connect(nodes[1])\n    assert nodes[0].is_connected(nodes[1])\n\n\
             def test_not_connected():\n    a, b = Node(1), Node(2)\n    assert not a.is_connected(b)\n"}),
        serde_json::json!({"id": "counter", "kind": "assert", "entry_points": ["make_counter"], "test_code":
            "assert make_counter(5).is_positive()\nassert make_counter(5).value() == 5\n"}),
    ];
    let tasks: Vec<PreparedTask> =
        tasks.into_iter().map(|t| f.verifier.prepare(serde_json::from_value(t).unwrap()).unwrap()).collect();
    let judge = |task: usize, code: &str| {
        let completion = Completion { task, text: format!("```python\n{code}\n```") };
        f.verifier.verify_batch(&tasks, &[completion], &|_| {}).remove(0)
    };
    let empty = judge(0, "class Node:\n    def __init__(self, v):\n        self.v = v\n");
    assert!(empty.tests.iter().all(|t| !t.verdict.passed()), "{backend:?}: {empty:?}");
    let empty = judge(1, "class C:\n    pass\ndef make_counter(n):\n    return C()\n");
    assert!(empty.tests.iter().all(|t| !t.verdict.passed()), "{backend:?}: {empty:?}");
    let honest = judge(
        0,
        "class Node:\n    def __init__(self, v):\n        self.v = v\n        self.links = []\n    \
         def connect(self, other):\n        self.links.append(other.v)\n    \
         def is_connected(self, other):\n        return other.v in self.links\n",
    );
    assert!(honest.all_passed, "{backend:?}: {honest:?}");
    let honest = judge(
        1,
        "class C:\n    def __init__(self, n):\n        self.n = n\n    def is_positive(self):\n        return self.n > 0\n    \
         def value(self):\n        return self.n\ndef make_counter(n):\n    return C(n)\n",
    );
    assert!(honest.all_passed, "{backend:?}: {honest:?}");
}

#[test]
fn native_methods_of_returned_objects_are_recorded() {
    methods_of_returned_objects(Backend::Native);
}

#[test]
fn wasm_methods_of_returned_objects_are_recorded() {
    methods_of_returned_objects(Backend::Wasm);
}

/// Not a hack, but it shares the fixture: a linked list of 200 nodes crosses the result channel
/// (objects travel in a flat table; nested, 50 nodes were too deep for the JSON reader and an
/// honest solution failed as malformed), and a wrong one still fails.
fn long_linked_lists(backend: Backend) {
    let f = fixture(backend);
    let test_code = "from solution import ListNode, reverse_list\n\n\
                     def build(values):\n    head = None\n    for v in reversed(values):\n        head = ListNode(v, head)\n    return head\n\n\
                     def to_list(node):\n    out = []\n    while node:\n        out.append(node.val)\n        node = node.next\n    return out\n\n\
                     def test_long():\n    assert to_list(reverse_list(build(list(range(200))))) == list(range(199, -1, -1))\n";
    let task = serde_json::json!({"id": "linked", "kind": "pytest", "test_code": test_code});
    let tasks = vec![f.verifier.prepare(serde_json::from_value(task).unwrap()).unwrap()];
    let node = "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val = val\n        self.next = next\n";
    let honest = format!(
        "{node}def reverse_list(head):\n    prev = None\n    while head:\n        head.next, prev, head = prev, head, head.next\n    return prev\n"
    );
    let wrong = format!("{node}def reverse_list(head):\n    return head\n");
    let completions: Vec<Completion> =
        [honest, wrong].iter().map(|code| Completion { task: 0, text: format!("```python\n{code}\n```") }).collect();
    let verdicts = f.verifier.verify_batch(&tasks, &completions, &|_| {});
    assert!(verdicts[0].all_passed, "{backend:?}: {:?}", verdicts[0]);
    assert_eq!(verdicts[1].summary(), "wrong_answer", "{backend:?}: {:?}", verdicts[1]);
}

#[test]
fn native_long_linked_lists_are_judged() {
    long_linked_lists(Backend::Native);
}

#[test]
fn wasm_long_linked_lists_are_judged() {
    long_linked_lists(Backend::Wasm);
}
