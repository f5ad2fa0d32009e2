//! Task files as users write and import them: limits no sandbox could apply, integers beyond
//! 64 bits, and tests that could fail no completion, through the `dllm-rl` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dllm_rl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_limit_no_sandbox_can_apply_is_an_error_naming_the_task_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (limits, field) in [(r#"{"time_s": -1}"#, "time_s"), (r#"{"time_s": 1e300}"#, "time_s"), (r#"{"memory_mb": 0}"#, "memory_mb")] {
        let tasks = write(
            dir.path(),
            "tasks.jsonl",
            &format!(
                "{{\"id\":\"ok/1\",\"kind\":\"stdio\",\"tests\":[{{\"stdin\":\"\",\"stdout\":\"1\\n\"}}],\"reference\":\"print(1)\"}}\n\
                 {{\"id\":\"bad/2\",\"kind\":\"stdio\",\"tests\":[{{\"stdin\":\"\",\"stdout\":\"1\\n\"}}],\"reference\":\"print(1)\",\"limits\":{limits}}}\n"
            ),
        );
        let verdicts = dir.path().join("verdicts.jsonl");
        let out = dllm_rl().args(["verify", "--reference", "--tasks"]).arg(&tasks).arg("--out").arg(&verdicts).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // An error exit, not a panic's 101.
        assert!(!out.status.success() && out.status.code() != Some(101), "{limits}: {stderr}");
        assert!(stderr.contains("bad/2") && stderr.contains(&format!("limits.{field}")), "{limits}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!verdicts.exists(), "no verdicts written for a task file that cannot run");
    }
}

#[test]
fn integers_beyond_64_bits_in_a_task_file_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    // 3**50 as a plain JSON number: read as a float, 3**50 + 12345 would equal it.
    let tasks = write(
        dir.path(),
        "tasks.jsonl",
        "{\"id\":\"pow\",\"kind\":\"call\",\"entry_point\":\"f\",\"tests\":[{\"args\":[50],\"expected\":717897987691852588770249}]}\n",
    );
    let completions = write(
        dir.path(),
        "completions.jsonl",
        "{\"task_id\":\"pow\",\"completion\":\"def f(n):\\n    return 3 ** n\\n\"}\n\
         {\"task_id\":\"pow\",\"completion\":\"def f(n):\\n    return 3 ** n + 12345\\n\"}\n",
    );
    let verdicts = dir.path().join("verdicts.jsonl");
    let out = dllm_rl().args(["verify", "--tasks"]).arg(&tasks).arg("--completions").arg(&completions).arg("--out").arg(&verdicts).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&verdicts).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((lines[0]["verdict"].as_str(), lines[1]["verdict"].as_str()), (Some("passed"), Some("wrong_answer")), "{lines:?}");
}

#[test]
fn prompts_import_drops_tests_that_carry_their_own_solution() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("tasks.jsonl");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shared/kodcode/algorithm_100_complete.json");
    let out = dllm_rl().args(["prompts", "import", "--format", "kodcode", "--out"]).arg(&out_file).arg(&data).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for id in ["kodcode/algorithm-00000041", "kodcode/algorithm-00000051"] {
        let line = stderr.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} not named: {stderr}"));
        assert!(line.starts_with("skipped: ") && line.contains("never reach the candidate"), "{line}");
    }
    let kept = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(kept.lines().count(), 13, "15 rows, 2 without a task");
    assert!(!kept.contains("algorithm-00000041"));
}
