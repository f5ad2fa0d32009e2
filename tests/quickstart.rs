//! The quickstart end to end, in a short version: toy tasks, tiny model, SFT, held-out pass@1,
//! coupled GRPO, pass@1 again — then every `dllm-rl audit` command on the run it produced, and
//! the HTML report loaded in headless Chromium (no console messages, every chart drawn).
//!
//! The full quickstart (3000 SFT steps, minutes) is a benchmark, recorded in
//! bench/results/quickstart-cpu-2core.md, not a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn dllm_rl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dllm-rl")).arg("-q").args(args).output().unwrap();
    assert!(out.status.success(), "dllm-rl {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the short quickstart once for every test here.
fn quickstart() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart-test");
        let _ = std::fs::remove_dir_all(&dir);
        // 150 SFT steps teach the answer's format, not yet the function: the format reward then
        // varies within groups, so GRPO has advantages to learn from.
        let out = dllm_rl(&[
            "quickstart", "--out", dir.to_str().unwrap(), "--sft-steps", "150", "--rl-steps", "4", "--eval-samples", "1", "--format-reward", "0.5",
        ]);
        let text = stdout(&out);
        assert!(text.contains("held-out pass@1: SFT ") && text.contains("% -> RL "), "{text}");
        assert!(text.contains("run store: "), "{text}");
        dir
    })
}

fn store_of(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(dir.join("rl/store.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

#[test]
fn the_short_quickstart_trains_logs_rewards_and_changes_the_weights() {
    let dir = quickstart();
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["held_out_samples"], 200, "200 held-out tasks x 1 sample");
    for key in ["sft_pass_at_1", "rl_pass_at_1"] {
        let p = result[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{key} = {p}");
    }
    let db = store_of(dir);
    let (steps, rollouts, rewarded): (i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM steps), (SELECT COUNT(*) FROM rollouts), (SELECT COUNT(*) FROM rollouts WHERE reward IS NOT NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((steps, rollouts, rewarded), (4, 4 * 64, 4 * 64));
    let spread: f64 = db.query_row("SELECT MAX(reward) - MIN(reward) FROM rollouts", [], |r| r.get(0)).unwrap();
    assert!(spread > 0.0, "rewards vary, so there is something to learn");
    let updated: i64 = db
        .query_row("SELECT COUNT(*) FROM steps WHERE json_extract(metrics, '$.grad_norm') > 0", [], |r| r.get(0))
        .unwrap();
    assert!(updated > 0, "at least one step updated the policy");
    let sft = std::fs::read(dir.join("sft/checkpoints/step-150/model/model.safetensors")).unwrap();
    let rl = std::fs::read(dir.join("rl/checkpoints/step-4/model/model.safetensors")).unwrap();
    assert_eq!(sft.len(), rl.len());
    assert_ne!(sft, rl, "RL changed the weights");
}

#[test]
fn every_audit_command_answers_on_the_quickstart_run() {
    let dir = quickstart();
    let run = dir.join("rl");
    let run = run.to_str().unwrap();

    let runs = stdout(&dllm_rl(&["audit", "runs", "--db", dir.to_str().unwrap()]));
    assert!(runs.contains("sft") && runs.contains(" rl ") && runs.contains("finished"), "{runs}");

    let steps: serde_json::Value = serde_json::from_str(&stdout(&dllm_rl(&["audit", "steps", run, "--metrics", "reward,pass_rate,loss", "--format", "json"]))).unwrap();
    assert_eq!(steps.as_array().unwrap().len(), 4);
    assert!(steps[0]["reward_mean"].is_number() && steps[0]["solve_mean"].is_number(), "{steps}");

    // By name, looked up under --db.
    let prompts = stdout(&dllm_rl(&["audit", "prompts", "rl", "--db", dir.to_str().unwrap(), "--format", "csv", "--limit", "0"]));
    assert_eq!(prompts.lines().count(), 1 + 4 * 8, "a header and one row per prompt sampled (4 steps x 8):\n{prompts}");
    let first_prompt = prompts.lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    let history = stdout(&dllm_rl(&["audit", "prompts", run, "--prompt", &first_prompt]));
    assert!(history.contains(&format!("prompt {first_prompt} (toy-")) && history.contains("status: "), "{history}");

    let listed: serde_json::Value = serde_json::from_str(&stdout(&dllm_rl(&["audit", "rollouts", run, "--step", "2", "--format", "json", "--limit", "0"]))).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 64);
    assert!(listed.iter().all(|r| r["step"] == 2));
    let id = listed[0]["id"].as_i64().unwrap().to_string();
    let shown = stdout(&dllm_rl(&["audit", "show", &id, "--db", run, "--colour", "always"]));
    assert!(shown.contains(&format!("rollout {id} · run rl · step 2")), "{shown}");
    assert!(shown.contains("── prompt (toy-") && shown.contains("\x1b[38;5;"), "prompt and decode-order colours:\n{shown}");
    assert!(shown.contains("── reward") && shown.contains("format"), "{shown}");

    let hacks = dllm_rl(&["audit", "hacks", run]);
    assert!(stdout(&hacks).starts_with("rollout"), "a table, even when empty");

    let jsonl = stdout(&dllm_rl(&["audit", "export", run, "--table", "rollouts", "--format", "jsonl"]));
    assert_eq!(jsonl.lines().count(), 4 * 64);
    let row: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert!(row["step_map"].is_array() && row["pieces"].is_array(), "{row}");
    let csv = stdout(&dllm_rl(&["audit", "export", run, "--table", "tests", "--format", "csv"]));
    assert!(csv.starts_with("rollout_id,step,prompt_id,test,verdict,seconds,stdout,stderr\n"));
    let parquet = dir.join("rollouts.parquet");
    dllm_rl(&["audit", "export", run, "--format", "parquet", "--out", parquet.to_str().unwrap()]);
    assert_eq!(&std::fs::read(&parquet).unwrap()[..4], b"PAR1");

    // Clear errors on bad input.
    let missing = Command::new(env!("CARGO_BIN_EXE_dllm-rl")).args(["audit", "steps", "no-such-run", "--db", dir.to_str().unwrap()]).output().unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no run named `no-such-run`") && err.contains("rl ("), "{err}");

    let report = dir.join("report.html");
    dllm_rl(&["audit", "report", run, "--out", report.to_str().unwrap()]);
    check_in_chromium(&report);
}

/// Loads the report in headless Chromium: it must log nothing to the console and its DOM must
/// hold every chart.
fn check_in_chromium(report: &Path) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: scripts/setup installs Debian's chromium (or set CHROMIUM)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&chromium)
        .args([
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", report.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the report logged to the console: {console:#?}");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.matches("<svg").count() >= 8, "charts in the rendered page: {}", dom.matches("<svg").count());
    for title in ["Reward per step", "Verdicts over time", "Pass rate by source", "Gradient norm (before clipping)"] {
        assert!(dom.contains(title), "{title} missing from the rendered page");
    }
}
