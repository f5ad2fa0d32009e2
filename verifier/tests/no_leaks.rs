//! Long runs leave nothing behind: after 10,000 native runs (and 1,000 wasm runs, which are
//! slower) the verifier holds the same file descriptors as after warm-up, no sandbox process is
//! left, no scratch folder remains, memory has not grown, and every verdict is the same.

mod common;

use dllm_verifier::{Backend, Completion, Task, Verifier};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wasm_scratch_dirs() -> usize {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("dllm-wasm-")).count())
        .unwrap_or(0)
}

fn many_runs(backend: Backend, runs: usize) {
    let task: Task = serde_json::from_str(
        r#"{"id":"echo","kind":"stdio","tests":[{"stdin":"hello\n","stdout":"hello\n"}],"limits":{"time_s":5}}"#,
    )
    .unwrap();
    let verifier = Verifier::new(backend, 2).unwrap();
    let tasks = vec![verifier.prepare(task).unwrap()];
    // Half right, half wrong, so that both paths run; verdicts must come out the same each time.
    let completions: Vec<Completion> = (0..runs)
        .map(|i| Completion { task: 0, text: if i % 2 == 0 { "print(input())" } else { "print('bye')" }.into() })
        .collect();
    let warm = verifier.verify_batch(&tasks, &completions[..100], &|_| {});
    let (fds, rss, dirs) = (open_fds(), rss_kib(), wasm_scratch_dirs());
    let verdicts = verifier.verify_batch(&tasks, &completions, &|_| {});
    for (i, v) in verdicts.iter().enumerate() {
        assert_eq!(v.all_passed, i % 2 == 0, "{backend:?} run {i}: {v:?}");
        assert!(!v.sandbox_error, "{backend:?} run {i}: {v:?}");
    }
    assert!(warm.iter().zip(&verdicts).all(|(a, b)| a.summary() == b.summary()));
    assert_eq!(open_fds(), fds, "{backend:?}: file descriptors leaked over {runs} runs");
    assert_eq!(wasm_scratch_dirs(), dirs, "{backend:?}: scratch folders left behind");
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 64 * 1024, "{backend:?}: resident memory grew by {grown} KiB over {runs} runs");
    // SAFETY: geteuid has no preconditions.
    if backend == Backend::Native && unsafe { libc::geteuid() } == 0 {
        assert_eq!(common::our_sandbox_processes(), Vec::<String>::new(), "sandbox processes outlived their runs");
    }
}

/// One test, so that nothing else in this process opens descriptors meanwhile.
#[test]
fn long_runs_leak_nothing() {
    many_runs(Backend::Native, 10_000);
    many_runs(Backend::Wasm, 1_000);
}
