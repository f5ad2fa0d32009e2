//! Where a wasm run's time goes: the interpreter alone, with a few imports, and the harness.
//! `cargo run --release -p dllm-verifier --example wasm_startup`
#![allow(clippy::print_stdout)] // an example prints its measurements
use std::time::{Duration, Instant};

use dllm_verifier::sandbox::{Job, RunLimits};
use dllm_verifier::{WasmConfig, WasmSandbox};

fn main() {
    let sandbox = WasmSandbox::new(WasmConfig::default()).unwrap();
    let job = Job {
        spec: serde_json::Value::Null,
        stdin: Vec::new(),
        limits: RunLimits { wall: Duration::from_secs(10), idle: None, memory_bytes: 1 << 30, output_bytes: 1 << 20, result_bytes: 1 << 20 },
    };
    for (name, args) in [
        ("-S -c pass (no site)", vec!["-S", "-c", "pass"]),
        ("-I -c pass", vec!["-I", "-c", "pass"]),
        ("pass", vec!["-c", "pass"]),
        ("print", vec!["-c", "print(1)"]),
        ("import json", vec!["-c", "import json"]),
        ("import json, math, types, time", vec!["-c", "import json, math, types, time"]),
        ("import ast", vec!["-c", "import ast"]),
        ("load harness bytecode", vec!["-c", "import marshal; marshal.loads(open('/usr/local/guest/guest.pyc','rb').read()[16:])"]),
        ("harness definitions", vec!["-c", "import marshal\ntry:\n    exec(marshal.loads(open('/usr/local/guest/guest.pyc','rb').read()[16:]))\nexcept BaseException:\n    pass"]),
        ("harness, stdio job", vec!["-c", "open('/run/job.json','w').write('{\"mode\":\"stdio\",\"code\":\"print(1)\"}')\nimport sys\nsys.argv=['x','run','/run/job.json','/run/results']\nexec(open('/usr/local/guest/guest.py').read())"]),
    ] {
        sandbox.run_raw(&args, &job).unwrap();
        let n = 20;
        let start = Instant::now();
        for _ in 0..n {
            sandbox.run_raw(&args, &job).unwrap();
        }
        println!("{name:<32} {:.1} ms", start.elapsed().as_secs_f64() * 1e3 / n as f64);
    }
    // Two threads at once: does it scale with cores?
    let n = 20;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..n {
                    sandbox.run_raw(&["-c", "pass"], &job).unwrap();
                }
            });
        }
    });
    println!("{:<32} {:.1} ms per run, 2 threads", "pass", start.elapsed().as_secs_f64() * 1e3 / (2 * n) as f64);
}
