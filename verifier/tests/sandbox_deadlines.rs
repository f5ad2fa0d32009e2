//! A run's deadlines hold whatever the candidate does to the channels the deadlines are read
//! from, and a wasm run cannot fill the host's disk: closing every descriptor and sleeping ends
//! in a timeout (it hung the verifier for good), writing to the result channel does not stretch
//! a test past its own limit, and a guest's writes are bounded.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dllm_verifier::{Backend, Completion, PreparedTask, TaskVerdict, TestVerdict, Verifier};

fn verifier(backend: Backend) -> &'static Verifier {
    static NATIVE: OnceLock<Verifier> = OnceLock::new();
    static WASM: OnceLock<Verifier> = OnceLock::new();
    let cell = match backend {
        Backend::Native => &NATIVE,
        Backend::Wasm => &WASM,
    };
    cell.get_or_init(|| Verifier::new(backend, 1).expect("sandbox starts"))
}

/// Judges `code` on `task` (JSON), failing the test instead of hanging when no verdict comes
/// within `patience`.
fn judge(backend: Backend, task: &str, code: &str, patience: Duration) -> (TaskVerdict, Duration) {
    let verifier = verifier(backend);
    let task: PreparedTask = verifier.prepare(serde_json::from_str(task).expect("valid task")).expect("task prepares");
    let completion = Completion { task: 0, text: format!("```python\n{code}\n```") };
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(verifier.verify_batch(&[task], &[completion], &|_| {}).remove(0));
    });
    match rx.recv_timeout(patience) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("{backend:?}: no verdict after {patience:?}: the run outlived its deadline"),
    }
}

fn status_field(pid: &str, field: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|l| l.split_whitespace().next())?.parse().ok()
}

/// Processes (zombies included) with a sandbox uid that descend from this test process.
fn our_sandbox_processes() -> Vec<String> {
    let me = std::process::id();
    let ours = |pid: &str| {
        let mut pid = pid.parse::<u32>().unwrap_or(0);
        while pid > 1 {
            pid = status_field(&pid.to_string(), "PPid:").unwrap_or(0);
            if pid == me {
                return true;
            }
        }
        false
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Some(uid) = status_field(&pid, "Uid:") else { continue };
        if dllm_verifier::native::SANDBOX_UIDS.contains(&uid) && ours(&pid) {
            let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            found.push(format!("{pid} uid {uid}: {}", state.trim()));
        }
    }
    found
}

const STDIO_TASK: &str =
    r#"{"id":"echo","kind":"stdio","tests":[{"stdin":"1\n","stdout":"2\n"}],"limits":{"time_s":1.0}}"#;

/// All three output pipes closed is not the end of the run: the program may live on. It must
/// still time out at its deadline, and leave no process behind.
#[test]
fn native_run_that_closes_its_pipes_and_sleeps_times_out() {
    let code = "import os, time\nfor fd in (1, 2, 3):\n    os.close(fd)\ntime.sleep(10**6)\n";
    let (v, took) = judge(Backend::Native, STDIO_TASK, code, Duration::from_secs(30));
    assert_eq!(v.tests[0].verdict, TestVerdict::Timeout, "{v:?}");
    assert!(!v.sandbox_error && took < Duration::from_secs(10), "{v:?} after {took:?}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let left = our_sandbox_processes();
        assert!(left.is_empty(), "processes outlived their runs: {left:?}");
    }
    let (v, _) = judge(Backend::Native, STDIO_TASK, "print(int(input()) + 1)", Duration::from_secs(30));
    assert!(v.all_passed, "the sandbox no longer works after the timeouts: {v:?}");
}

/// Six call tests; the first sleeps 4.5 s, past its limit (1 s and a second of start-up; the
/// wasm sandbox scales the 0.2 s to 1 s) but within the run's (7 s), writing to the result
/// channel all the while: newlines, empty objects, a line for a test that does not exist.
fn stretched_test(backend: Backend) {
    let time_s = match backend {
        Backend::Native => 1.0,
        Backend::Wasm => 0.2,
    };
    let tests: Vec<String> = (0..6).map(|x| format!(r#"{{"args":[{x}],"expected":{}}}"#, 2 * x)).collect();
    let task = format!(
        r#"{{"id":"slow","kind":"call","entry_point":"f","tests":[{}],"limits":{{"time_s":{time_s}}}}}"#,
        tests.join(",")
    );
    let ping = match backend {
        Backend::Native => "os.write(3, NOISE)",
        Backend::Wasm => "open('/run/results', 'ab').write(NOISE)",
    };
    let code = format!(
        "import os, time\nNOISE = b'\\n{{}}\\n{{\"test\": 7}}\\n'\ndef f(x):\n    if x == 0:\n        for _ in range(15):\n            \
         {ping}\n            time.sleep(0.3)\n    return 2 * x\n"
    );
    let (v, _) = judge(backend, &task, &code, Duration::from_secs(60));
    assert_eq!(v.tests[0].verdict, TestVerdict::Timeout, "{backend:?}: {v:?}");
    assert!(v.tests[0].seconds < 3.0, "{backend:?}: the first test's run took {} s", v.tests[0].seconds);
    assert!(v.tests[1..].iter().all(|t| t.verdict.passed()) && !v.sandbox_error, "{backend:?}: {v:?}");
}

#[test]
fn native_result_channel_noise_does_not_stretch_a_test() {
    stretched_test(Backend::Native);
}

#[test]
fn wasm_result_channel_noise_does_not_stretch_a_test() {
    stretched_test(Backend::Wasm);
}
