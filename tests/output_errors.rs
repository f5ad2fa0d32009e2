//! Output that cannot be written: a full device ends the command with one line and status 1, a
//! reader that went away ends it quietly.

use std::process::{Command, Stdio};

fn stats_command(dir: &std::path::Path) -> Command {
    let tasks = dir.join("tasks.jsonl");
    let line = r#"{"id":"t/1","kind":"stdio","tests":[{"stdin":"","stdout":"1\n"}],"reference":"print(1)"}"#;
    std::fs::write(&tasks, format!("{line}\n")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dllm-rl"));
    cmd.args(["prompts", "stats"]).arg(&tasks);
    cmd
}

#[test]
fn a_full_device_is_one_line_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = stats_command(dir.path()).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot write the output") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_closed_pipe_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = stats_command(dir.path()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(141));
}
