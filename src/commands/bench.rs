//! `dllm-rl bench verify`: verifier throughput, side by side with a naive baseline.
//!
//! The baseline is what simple RL reward code does: one `python3 -c` subprocess per run, no
//! pool, pass = exit code 0 (or stdout equal), with the same number of concurrent runs. All
//! three (baseline, native, wasm) run the same workloads in one process, one after another,
//! so their ratios are comparable even on a noisy machine.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use dllm_verifier::{Backend, Completion, PreparedTask, Task, Verifier};
use serde::Serialize;

use crate::cli::BenchVerifyArgs;

const SOLUTION: &str = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n";
const ASSERTS: &str = "assert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)\n\
assert similar_elements((1, 2, 3, 4), (5, 4, 3, 7)) == (3, 4)\n\
assert similar_elements((11, 12, 14, 13), (17, 15, 14, 13)) == (13, 14)\n";
const STDIO_PROGRAM: &str = "n = int(input())\nprint(sum(int(x) for x in input().split()) * n)\n";
const STDIN: &str = "3\n1 2 3 4 5\n";
const STDOUT: &str = "45\n";

#[derive(Serialize)]
struct Row {
    workload: &'static str,
    backend: &'static str,
    runs: usize,
    seconds: f64,
    runs_per_second: f64,
    all_passed: bool,
}

pub fn run(args: BenchVerifyArgs) -> anyhow::Result<ExitCode> {
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let python = dllm_verifier::native::default_python();
    let mut rows = Vec::new();
    for workload in ["assert", "stdio"] {
        rows.push(naive(workload, &python, args.runs, jobs)?);
        for backend in [Backend::Native, Backend::Wasm] {
            if backend == Backend::Wasm && args.no_wasm {
                continue;
            }
            rows.push(ours(workload, backend, args.runs, jobs)?);
        }
    }
    println!("verifier throughput, {jobs} concurrent runs, {} runs per cell", args.runs);
    println!("{:<8} {:<8} {:>10} {:>9} {:>12}", "workload", "backend", "runs/s", "x naive", "all passed");
    for row in &rows {
        let naive = rows.iter().find(|r| r.workload == row.workload && r.backend == "naive").map_or(1.0, |r| r.runs_per_second);
        println!(
            "{:<8} {:<8} {:>10.1} {:>8.2}x {:>12}",
            row.workload,
            row.backend,
            row.runs_per_second,
            row.runs_per_second / naive,
            row.all_passed
        );
    }
    if let Some(out) = &args.json {
        std::fs::write(out, serde_json::to_vec_pretty(&rows)?).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn task(workload: &str) -> Task {
    let json = match workload {
        "assert" => serde_json::json!({"id": "bench/assert", "kind": "assert", "entry_points": ["similar_elements"], "test_code": ASSERTS}),
        _ => serde_json::json!({"id": "bench/stdio", "kind": "stdio", "tests": [{"stdin": STDIN, "stdout": STDOUT}]}),
    };
    serde_json::from_value(json).expect("valid bench task")
}

fn ours(workload: &'static str, backend: Backend, runs: usize, jobs: usize) -> anyhow::Result<Row> {
    let verifier = Verifier::new(backend, jobs)?;
    let prepared: Vec<PreparedTask> = vec![verifier.prepare(task(workload))?];
    let code = if workload == "assert" { SOLUTION } else { STDIO_PROGRAM };
    let completions: Vec<Completion> = (0..runs).map(|_| Completion { task: 0, text: code.into() }).collect();
    // Warm up: start every worker's sandbox before timing.
    verifier.verify_batch(&prepared, &completions[..jobs.min(runs)], &|_| {});
    let start = Instant::now();
    let verdicts = verifier.verify_batch(&prepared, &completions, &|_| {});
    let seconds = start.elapsed().as_secs_f64();
    Ok(Row {
        workload,
        backend: if backend == Backend::Native { "native" } else { "wasm" },
        runs,
        seconds,
        runs_per_second: runs as f64 / seconds,
        all_passed: verdicts.iter().all(|v| v.all_passed),
    })
}

fn naive(workload: &'static str, python: &std::path::Path, runs: usize, jobs: usize) -> anyhow::Result<Row> {
    let next = AtomicUsize::new(0);
    let passed = AtomicUsize::new(0);
    let program = if workload == "assert" { format!("{SOLUTION}\n{ASSERTS}") } else { STDIO_PROGRAM.to_owned() };
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < runs {
                    let Ok(mut child) = Command::new(python)
                        .arg("-c")
                        .arg(&program)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                    else {
                        continue;
                    };
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(if workload == "stdio" { STDIN.as_bytes() } else { b"" });
                    }
                    let Ok(out) = child.wait_with_output() else { continue };
                    let ok = out.status.success() && (workload == "assert" || out.stdout == STDOUT.as_bytes());
                    if ok {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    Ok(Row {
        workload,
        backend: "naive",
        runs,
        seconds,
        runs_per_second: runs as f64 / seconds,
        all_passed: passed.load(Ordering::Relaxed) == runs,
    })
}
