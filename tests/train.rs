//! `dllm-rl train` end to end on a tiny random model: the loop runs, rollouts and rewards are
//! logged, the adapters change, checkpoints appear, and a run stopped and resumed ends exactly
//! where an uninterrupted run ends.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dllm_rl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(args: &[&str]) {
    let out = dllm_rl().arg("-q").args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tiny model, 4 MBPP tasks, and a config whose reward varies even for a random model: the
/// vocabulary is only the byte tokenizer's 260 tokens (+4), so stop tokens are sampled often
/// enough that completion lengths vary, and the reward is a length penalty on top of pass_all.
/// Groups are then informative and updates happen.
fn setup(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    let mut shape: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo("configs/models/tiny.json")).unwrap()).unwrap();
    shape["vocab_size"] = 264.into();
    let shape_path = dir.join("tiny-264.json");
    std::fs::write(&shape_path, shape.to_string()).unwrap();
    run(&["model", "init", "--byte-tokenizer", "--config", shape_path.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    let tasks = dir.join("tasks.jsonl");
    run(&["prompts", "import", "--format", "sandboxfusion-mbpp", "--out", tasks.to_str().unwrap(), repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl").to_str().unwrap()]);
    let four: String = std::fs::read_to_string(&tasks).unwrap().lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(&tasks, four).unwrap();
    dir.to_path_buf()
}

fn config(dir: &Path, name: &str, steps: i64) -> PathBuf {
    let text = format!(
        r#"[run]
name = "{name}"
out_dir = "runs"
seed = 7
total_steps = {steps}
save_freq = 2

[model]
path = "model"
[model.lora]
r = 4
lora_alpha = 8.0

[data]
train_files = ["tasks.jsonl"]
train_batch_size = 2

[rollout]
n = 8
batch_size = 16
[rollout.sampler]
max_new_tokens = 32
steps = 32
temperature = 1.0
[rollout.sampler.block]
length = 8

[reward]
pass_all = 1.0
[reward.overlong]
weight = 1.0
max_tokens = 32
buffer = 32

[actor]
ppo_epochs = 2
ppo_micro_batch_size = 4

[optim]
lr = 0.01
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn adapter(dir: &Path, run: &str, step: i64) -> Vec<u8> {
    std::fs::read(dir.join(format!("runs/{run}/checkpoints/step-{step}/adapter/adapter_model.safetensors"))).unwrap()
}

#[test]
fn train_logs_learns_checkpoints_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());

    // Uninterrupted: 4 steps; started from the run's folder with a relative config path, as
    // people do (`train --config a.toml`).
    config(&dir, "a", 4);
    let out = dllm_rl().current_dir(&dir).args(["-q", "train", "--config", "a.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = rusqlite::Connection::open(dir.join("runs/a/store.sqlite")).unwrap();
    let (steps, rollouts, status): (i64, i64, String) = db
        .query_row("SELECT (SELECT COUNT(*) FROM steps), (SELECT COUNT(*) FROM rollouts), (SELECT status FROM runs)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    assert_eq!((steps, rollouts, status.as_str()), (4, 4 * 2 * 8, "finished"));
    let updated: i64 = db.query_row("SELECT COUNT(*) FROM steps WHERE metrics ->> '$.grad_norm' > 0", [], |r| r.get(0)).unwrap();
    assert!(updated >= 3, "only {updated} of 4 steps updated the adapters");
    let rewards: i64 = db.query_row("SELECT COUNT(DISTINCT reward) FROM rollouts", [], |r| r.get(0)).unwrap();
    assert!(rewards > 1, "rewards vary");
    // The adapters name their base by an absolute path (PEFT would look a relative one up on
    // the hub), the one it was trained from.
    let peft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/a/checkpoints/step-2/adapter/adapter_config.json")).unwrap()).unwrap();
    let base = std::path::PathBuf::from(peft["base_model_name_or_path"].as_str().unwrap());
    assert!(base.is_absolute(), "{base:?}");
    assert_eq!(std::fs::canonicalize(&base).unwrap(), std::fs::canonicalize(dir.join("model")).unwrap());
    // The adapters moved away from their initialisation (B = 0 at first).
    let first = adapter(&dir, "a", 2);
    let last = adapter(&dir, "a", 4);
    assert!(first != last, "the adapters did not change between steps 2 and 4");
    assert!(dir.join("runs/a/config.toml").exists());

    // Interrupted after 2 steps, then resumed to 4: the same adapters, bit for bit.
    run(&["train", "--config", config(&dir, "b", 2).to_str().unwrap()]);
    let cfg = config(&dir, "b", 4);
    run(&["train", "--resume", "--config", cfg.to_str().unwrap()]);
    assert!(adapter(&dir, "b", 4) == last, "resumed run differs from the uninterrupted one");
    let db = rusqlite::Connection::open(dir.join("runs/b/store.sqlite")).unwrap();
    let steps: i64 = db.query_row("SELECT COUNT(*) FROM steps WHERE superseded = 0", [], |r| r.get(0)).unwrap();
    assert_eq!(steps, 4);

    // kill -9 at an arbitrary moment after the step-2 checkpoint (mid-step or mid-checkpoint),
    // then --resume: the same adapters again, and no half-written checkpoint was ever visible.
    let cfg = config(&dir, "k", 4);
    let mut child = dllm_rl().args(["-q", "train", "--config", cfg.to_str().unwrap()]).spawn().unwrap();
    let ckpts = dir.join("runs/k/checkpoints");
    let started = std::time::Instant::now();
    while !ckpts.join("step-2").exists() {
        assert!(started.elapsed().as_secs() < 600, "no step-2 checkpoint after 10 minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The nanoseconds of the clock pick the moment: 0-1.5 s into step 3 (a step takes ~1 s).
    let delay = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 1_500_000_000;
    std::thread::sleep(std::time::Duration::from_nanos(delay as u64));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    for entry in std::fs::read_dir(&ckpts).unwrap() {
        let entry = entry.unwrap().path();
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        // `step-N.tmp` is a checkpoint being written; only `step-N` counts (and must be whole).
        if name.strip_prefix("step-").is_some_and(|n| n.parse::<i64>().is_ok()) {
            assert!(entry.join("adapter/adapter_model.safetensors").exists(), "{name} is a half checkpoint");
        }
    }
    run(&["train", "--resume", "--config", cfg.to_str().unwrap()]);
    assert!(adapter(&dir, "k", 4) == last, "the run killed after {delay} ns and resumed differs from the uninterrupted one");

    // A second fresh run under the same name is refused with the way out.
    let out = dllm_rl().args(["train", "--config", config(&dir, "a", 4).to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    // A resume under another config is refused, naming what changed.
    let changed = config(&dir, "a", 6);
    std::fs::write(&changed, std::fs::read_to_string(&changed).unwrap().replace("lr = 0.01", "lr = 0.02")).unwrap();
    let out = dllm_rl().args(["train", "--resume", "--config", changed.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in: optim.lr."), "{stderr}");
}

#[test]
fn a_kl_penalty_to_the_base_model_and_an_entropy_bonus_are_measured_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let cfg = config(&dir, "kl", 2);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[actor]\n", "[actor]\nuse_kl_loss = true\nkl_loss_coef = 0.1\nentropy_coeff = 0.01\n");
    std::fs::write(&cfg, text).unwrap();
    run(&["train", "--config", cfg.to_str().unwrap()]);
    let db = rusqlite::Connection::open(dir.join("runs/kl/store.sqlite")).unwrap();
    let kl: Vec<Option<f64>> =
        db.prepare("SELECT metrics ->> '$.kl_loss' FROM steps ORDER BY step").unwrap().query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(kl.len(), 2);
    // The adapters start as the identity (B = 0), so the policy is the base until the first
    // update; after it, the penalty is positive (and k3 is clamped at 10).
    assert!(kl.iter().all(|k| k.is_some_and(|k| (0.0..10.0).contains(&k))), "{kl:?}");
    assert!(kl[1].unwrap() > 0.0, "{kl:?}");
    // Entropy of a random model's predictions over 264 tokens: positive, at most ln 264.
    let entropy: f64 = db.query_row("SELECT metrics ->> '$.entropy' FROM steps WHERE step = 0", [], |r| r.get(0)).unwrap();
    assert!(entropy > 0.0 && entropy <= (264f64).ln() + 1e-6, "{entropy}");
}

#[test]
fn sft_fits_reference_solutions_and_writes_a_loadable_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let text = r#"[run]
name = "sft"
out_dir = "runs"
total_steps = 30
save_freq = 15

[model]
path = "model"

[data]
train_files = ["tasks.jsonl"]

[sft]
batch_size = 4
micro_batch_size = 2
max_response_tokens = 160

[optim]
lr = 0.003
weight_decay = 0.0
"#;
    std::fs::write(dir.join("sft.toml"), text).unwrap();
    // Not on a terminal (stderr is a pipe here): progress comes as log lines, at most one per
    // interval (0 here: every step) and the last one at the end.
    let out = dllm_rl().args(["sft", "--config", dir.join("sft.toml").to_str().unwrap()]).env("DLLM_PROGRESS_INTERVAL_S", "0").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("step 1/30") && stderr.contains("step 30/30 loss"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in a log: {stderr}");
    let db = rusqlite::Connection::open(dir.join("runs/sft/store.sqlite")).unwrap();
    let losses: Vec<f64> = db
        .prepare("SELECT metrics ->> '$.loss' FROM steps ORDER BY step")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(losses.len(), 30);
    let (first, last) = (losses[..5].iter().sum::<f64>() / 5.0, losses[25..].iter().sum::<f64>() / 5.0);
    assert!(last < 0.7 * first, "the loss falls on 4 memorisable answers: {first:.3} -> {last:.3}");
    // The checkpoint is a Hugging Face model folder with the tokenizer: generate from it.
    let ckpt = dir.join("runs/sft/checkpoints/step-30/model");
    assert!(ckpt.join("tokenizer.json").exists());
    run(&["generate", "--model", ckpt.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "8"]);
}

/// Starts a long run, waits until its first step is in the store, then sends `signal`.
fn signalled_run(dir: &Path, name: &str, signal: libc::c_int) -> (std::process::Output, std::time::Duration) {
    let cfg = config(dir, name, 200);
    let child = dllm_rl().current_dir(dir).args(["-q", "train", "--config", cfg.to_str().unwrap()]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let store = dir.join(format!("runs/{name}/store.sqlite"));
    let started = std::time::Instant::now();
    loop {
        assert!(started.elapsed() < std::time::Duration::from_secs(300), "no step logged after 5 minutes");
        let steps = rusqlite::Connection::open(&store).ok().and_then(|db| db.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get::<_, i64>(0)).ok());
        if steps.unwrap_or(0) >= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let sent = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    (out, sent.elapsed())
}

fn status_and_checkpoints(dir: &Path, name: &str) -> (String, Vec<i64>) {
    let db = rusqlite::Connection::open(dir.join(format!("runs/{name}/store.sqlite"))).unwrap();
    let status: String = db.query_row("SELECT status FROM runs", [], |r| r.get(0)).unwrap();
    let steps = db.prepare("SELECT step FROM checkpoints ORDER BY step").unwrap().query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    (status, steps)
}

/// SIGTERM (what `timeout`, SLURM and Kubernetes send) does what Ctrl-C does: the step in
/// flight finishes, a checkpoint is written, the run is `interrupted` and resumable, and the
/// exit status is 143 (128 + 15), as a shell reports a terminated job.
#[test]
fn sigterm_stops_after_the_step_with_a_checkpoint_and_exits_143() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let (out, took) = signalled_run(&dir, "term", libc::SIGTERM);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(120), "stopping took {took:?}");
    let (status, checkpoints) = status_and_checkpoints(&dir, "term");
    assert_eq!(status, "interrupted");
    let last = *checkpoints.last().expect("no checkpoint at the stop");
    assert!((1..200).contains(&last), "{checkpoints:?}");
    // The run resumes where it stopped.
    let cfg = config(&dir, "term", last + 1);
    run(&["train", "--resume", "--config", cfg.to_str().unwrap()]);
    assert_eq!(status_and_checkpoints(&dir, "term"), ("finished".to_string(), [checkpoints.clone(), vec![last + 1]].concat()));
}

/// SIGUSR1 (SLURM's `--signal=B:USR1@120`) writes a checkpoint after the current step and goes
/// on; then SIGINT stops with 130.
#[test]
fn sigusr1_checkpoints_and_goes_on_and_sigint_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let cfg = config(&dir, "usr1", 200);
    // No regular checkpoint: the only one is the one asked for.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("save_freq = 2", "save_freq = 1000")).unwrap();
    let mut child = dllm_rl().current_dir(&dir).args(["-q", "train", "--config", cfg.to_str().unwrap()]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let store = dir.join("runs/usr1/store.sqlite");
    let steps = || rusqlite::Connection::open(&store).ok().and_then(|db| db.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get::<_, i64>(0)).ok()).unwrap_or(0);
    let checkpoints = || rusqlite::Connection::open(&store).ok().and_then(|db| db.query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get::<_, i64>(0)).ok()).unwrap_or(0);
    let wait = |what: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !what() {
            assert!(started.elapsed() < std::time::Duration::from_secs(300), "timed out");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait(&|| steps() >= 1);
    assert_eq!(checkpoints(), 0);
    // SAFETY: signals to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) }, 0);
    let asked_at = steps();
    // The checkpoint comes after the step in flight, and the run goes on past it.
    wait(&|| checkpoints() >= 1 && steps() >= asked_at + 2);
    assert_eq!(checkpoints(), 1, "one SIGUSR1, one checkpoint");
    let db = rusqlite::Connection::open(&store).unwrap();
    let status: String = db.query_row("SELECT status FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "running", "SIGUSR1 must not stop the run");
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(status_and_checkpoints(&dir, "usr1").0, "interrupted");
}

/// One writer per run: a second `train --resume` beside a live run is refused at once, naming
/// the first one's pid; once that process is gone (here SIGKILL: no clean-up at all), the run
/// resumes.
#[test]
fn a_second_process_on_a_live_run_is_refused_and_a_killed_holder_leaves_no_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let cfg = config(&dir, "busy", 200);
    let mut first = dllm_rl().current_dir(&dir).args(["-q", "train", "--config", cfg.to_str().unwrap()]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let store = dir.join("runs/busy/store.sqlite");
    let started = std::time::Instant::now();
    while rusqlite::Connection::open(&store).ok().and_then(|db| db.query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get::<_, i64>(0)).ok()).unwrap_or(0) < 1 {
        assert!(started.elapsed() < std::time::Duration::from_secs(300), "no checkpoint after 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = dllm_rl().current_dir(&dir).args(["-q", "train", "--resume", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second writer ran: {stderr}");
    assert!(stderr.contains(&format!("in use by pid {}", first.id())), "{stderr}");
    first.kill().unwrap();
    let _ = first.wait();
    let db = rusqlite::Connection::open(&store).unwrap();
    let last: i64 = db.query_row("SELECT MAX(step) FROM checkpoints", [], |r| r.get(0)).unwrap();
    drop(db);
    run(&["train", "--resume", "--config", config(&dir, "busy", last + 1).to_str().unwrap()]);
}

/// A terminal's Ctrl-C goes to the whole foreground process group: the run stops cleanly, and
/// the sandbox servers and trusted judges (in groups of their own) print no Python
/// `KeyboardInterrupt` tracebacks into the log.
#[test]
fn ctrl_c_at_a_terminal_reaches_the_run_and_not_its_sandboxes() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let cfg = config(&dir, "ctrl-c", 200);
    // The run leads a process group, as a shell's foreground job does.
    let child = dllm_rl()
        .current_dir(&dir)
        .args(["-q", "train", "--config", cfg.to_str().unwrap()])
        .process_group(0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let store = dir.join("runs/ctrl-c/store.sqlite");
    let started = std::time::Instant::now();
    while rusqlite::Connection::open(&store).ok().and_then(|db| db.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get::<_, i64>(0)).ok()).unwrap_or(0) < 1 {
        assert!(started.elapsed() < std::time::Duration::from_secs(300), "no step after 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signals the process group our child leads.
    assert_eq!(unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("KeyboardInterrupt") && !stderr.contains("Traceback"), "{stderr}");
    assert_eq!(status_and_checkpoints(&dir, "ctrl-c").0, "interrupted");
}
