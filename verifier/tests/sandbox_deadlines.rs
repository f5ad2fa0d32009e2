//! A run's deadlines hold whatever the candidate does to the channels the deadlines are read
//! from, and a wasm run cannot fill the host's disk: closing every descriptor and sleeping ends
//! in a timeout (it hung the verifier for good), writing to the result channel does not stretch
//! a test past its own limit, and a guest's writes are bounded.

mod common;

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
        let left = common::our_sandbox_processes();
        assert!(left.is_empty(), "processes outlived their runs: {left:?}");
    }
    let (v, _) = judge(Backend::Native, STDIO_TASK, "print(int(input()) + 1)", Duration::from_secs(30));
    assert!(v.all_passed, "the sandbox no longer works after the timeouts: {v:?}");
}

#[test]
fn wasm_run_that_closes_its_descriptors_and_sleeps_times_out() {
    let code = "import os, time\nfor fd in (1, 2, 3):\n    os.close(fd)\ntime.sleep(10**6)\n";
    let (v, _) = judge(Backend::Wasm, STDIO_TASK, code, Duration::from_secs(60));
    assert_eq!(v.tests[0].verdict, TestVerdict::Timeout, "{v:?}");
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

/// A wasm guest's files go to a host folder: it may write its budget (its result and output
/// caps, and 16 MiB of files), and a write past it ends the run.
#[test]
fn wasm_guest_cannot_fill_the_host_disk() {
    let code = "import os\nchunk = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n    for _ in range(64):\n        \
                f.write(chunk)\nprint('wrote', os.stat('big.bin').st_size)\n";
    let (v, _) = judge(Backend::Wasm, STDIO_TASK, code, Duration::from_secs(60));
    assert_eq!(v.tests[0].verdict, TestVerdict::OutputLimit, "{v:?}");
    assert!(!v.tests[0].stdout.contains("wrote"), "{v:?}");
    // Within the budget, files work.
    let code = "with open('data.bin', 'wb') as f:\n    f.write(b'x' * (8 << 20))\n\
                assert len(open('data.bin', 'rb').read()) == 8 << 20\nprint(int(input()) + 1)\n";
    let (v, _) = judge(Backend::Wasm, STDIO_TASK, code, Duration::from_secs(60));
    assert!(v.all_passed, "{v:?}");
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next());
    peak.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A result file made huge without writing (a sparse one, by truncation) is read only up to its
/// cap: over it, an output-limit verdict, and the verifier's memory does not grow by its size.
#[test]
fn wasm_huge_result_file_is_read_only_to_its_cap() {
    let code = "with open('/run/results', 'ab') as f:\n    f.truncate(2 << 30)\nprint(int(input()) + 1)\n";
    verifier(Backend::Wasm);
    let before = peak_rss_kib();
    let (v, _) = judge(Backend::Wasm, STDIO_TASK, code, Duration::from_secs(60));
    assert_eq!(v.tests[0].verdict, TestVerdict::OutputLimit, "{v:?}");
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 1 << 20, "the verifier's peak memory grew by {grown} KiB");
}
