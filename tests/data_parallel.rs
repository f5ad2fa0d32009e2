//! Data parallel end to end, on loopback Gloo: the same short GRPO run with one process, with
//! two ranks under torchrun (`scripts/setup` puts torchrun in the venv) and with two torchrun
//! "nodes" of one rank logs the same first rollouts and has the same adapters within float
//! tolerance after an update; a killed rank ends the other with an error naming it; a resume
//! needs the run's world size; ZeRO-2 full fine-tuning matches the unsharded optimizer and
//! resumes from its per-rank shards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn dllm_rl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One process, with one intra-op thread as torchrun gives each rank: float sums split over
/// another number of threads round differently and can flip a sampled token.
fn run(dir: &Path, args: &[&str]) {
    let out = dllm_rl().current_dir(dir).arg("-q").args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tiny byte-tokenizer model, 4 MBPP tasks and a run whose rewards vary (a length penalty),
/// without dropout (its draws would depend on which rank trains which micro-batch).
fn setup(dir: &Path) {
    let mut shape: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo("configs/models/tiny.json")).unwrap()).unwrap();
    shape["vocab_size"] = 264.into();
    std::fs::write(dir.join("tiny-264.json"), shape.to_string()).unwrap();
    run(dir, &["model", "init", "--byte-tokenizer", "--config", "tiny-264.json", "--out", "model"]);
    let mbpp = repo("tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl");
    run(dir, &["prompts", "import", "--format", "sandboxfusion-mbpp", "--out", "tasks.jsonl", mbpp.to_str().unwrap()]);
    let four: String = std::fs::read_to_string(dir.join("tasks.jsonl")).unwrap().lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("tasks.jsonl"), four).unwrap();
}

fn config(dir: &Path, name: &str, steps: i64) -> PathBuf {
    let text = format!(
        r#"[run]
name = "{name}"
out_dir = "runs"
seed = 11
total_steps = {steps}
save_freq = 1

[model]
path = "model"
[model.lora]
r = 4
lora_alpha = 8.0
lora_dropout = 0.0

[data]
train_files = ["tasks.jsonl"]
train_batch_size = 4

[rollout]
n = 4
batch_size = 8
[rollout.sampler]
max_new_tokens = 16
steps = 16
temperature = 1.0
[rollout.sampler.block]
length = 8

[verifier]
jobs = 1

[reward]
pass_all = 1.0
[reward.overlong]
weight = 1.0
max_tokens = 16
buffer = 16

[actor]
ppo_epochs = 2
ppo_micro_batch_size = 4

[optim]
lr = 0.01

[distributed]
timeout_s = 60
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn torchrun(dir: &Path, ranks: usize, args: &[&str]) -> std::process::Output {
    Command::new(repo(".venv/bin/torchrun"))
        .current_dir(dir)
        .args(["--nproc-per-node", &ranks.to_string(), "--master-addr", "127.0.0.1", "--master-port", &free_port().to_string(), "--no-python"])
        .arg(env!("CARGO_BIN_EXE_dllm-rl"))
        .arg("-q")
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn adapter(dir: &Path, run: &str, step: i64) -> Vec<f32> {
    weights(&dir.join(format!("runs/{run}/checkpoints/step-{step}/adapter/adapter_model.safetensors")))
}

/// Every fp32 tensor of a safetensors file, in name order, flattened.
fn weights(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            let t = tensors.tensor(n).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}");
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>()
        })
        .collect()
}

/// (step, prompt, sample) → (completion, reward) of a run's store.
fn rollouts(dir: &Path, run: &str) -> Vec<(i64, String, i64, String, Option<f64>)> {
    let db = rusqlite::Connection::open(dir.join(format!("runs/{run}/store.sqlite"))).unwrap();
    let mut q = db.prepare("SELECT step, prompt_id, sample, completion, reward FROM rollouts WHERE superseded = 0 ORDER BY step, prompt_id, sample").unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).unwrap().map(|r| r.unwrap()).collect()
}

/// Run `other` against run `one`: the first step's rollouts are the same token for token
/// (same prompts, seeds and weights), and one update later the adapters agree within float
/// tolerance (only the order of the gradient sums differs). Later rollouts are not compared:
/// on a random tiny model the confidences that order the unmasking tie to the last bit, so a
/// 1e-8 difference in the weights reorders them, and the runs drift apart as two seeds would.
fn same_as_one_process(dir: &Path, other: &str) {
    let (one, two) = (rollouts(dir, "one"), rollouts(dir, other));
    assert_eq!(one.len(), 2 * 4 * 4);
    assert_eq!(two.len(), one.len());
    let first = |r: &[(i64, String, i64, String, Option<f64>)]| r.iter().filter(|x| x.0 == 0).cloned().collect::<Vec<_>>();
    assert_eq!(first(&one), first(&two), "{other} logged other rollouts than the single process in its first step");
    let db = rusqlite::Connection::open(dir.join("runs/one/store.sqlite")).unwrap();
    let grad_norm: f64 = db.query_row("SELECT metrics ->> '$.grad_norm' FROM steps WHERE step = 0", [], |r| r.get(0)).unwrap();
    assert!(grad_norm > 0.0, "the first step did not update the adapters: the comparison would be empty");
    let (a, b) = (adapter(dir, "one", 1), adapter(dir, other, 1));
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("{other}: adapters after one step differ by up to {worst}, largest weight {scale}");
    assert!(worst <= 1e-5 * scale.max(1.0), "adapters differ by up to {worst} (largest weight {scale})");
}

#[test]
fn two_ranks_train_as_one_process_and_a_resume_keeps_the_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    run(dir, &["train", "--config", config(dir, "one", 2).to_str().unwrap()]);
    let out = torchrun(dir, 2, &["train", "--config", config(dir, "two", 2).to_str().unwrap()]);
    assert!(out.status.success(), "torchrun: {}", String::from_utf8_lossy(&out.stderr));

    same_as_one_process(dir, "two");
    // Only rank 0 wrote: one run, one row per step.
    let steps: i64 = rusqlite::Connection::open(dir.join("runs/two/store.sqlite")).unwrap().query_row("SELECT COUNT(*) FROM steps", [], |r| r.get(0)).unwrap();
    assert_eq!(steps, 2);

    // The run of two ranks resumes on two, and is refused on one, naming both sizes.
    let longer = config(dir, "two", 3);
    let out = dllm_rl().current_dir(dir).args(["-q", "train", "--resume", "--config", longer.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ran on 2 rank(s) and this start has 1"), "{stderr}");
    let out = torchrun(dir, 2, &["train", "--resume", "--config", longer.to_str().unwrap()]);
    assert!(out.status.success(), "resume on 2 ranks: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rollouts(dir, "two").len(), 3 * 4 * 4);
}

/// Two torchrun agents of one rank each, as two nodes would start them (`--nnodes 2
/// --node-rank i`), rendezvous on loopback; the run folder is shared, as on a cluster.
#[test]
fn two_nodes_train_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    run(dir, &["train", "--config", config(dir, "one", 2).to_str().unwrap()]);
    let cfg = config(dir, "nodes", 2);
    let port = free_port().to_string();
    let node = |rank: &str| {
        Command::new(repo(".venv/bin/torchrun"))
            .current_dir(dir)
            .args(["--nnodes", "2", "--node-rank", rank, "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", &port, "--no-python"])
            .arg(env!("CARGO_BIN_EXE_dllm-rl"))
            .args(["-q", "train", "--config", cfg.to_str().unwrap()])
            .env("OMP_NUM_THREADS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (zero, one) = (node("0"), node("1"));
    let (zero, one) = (zero.wait_with_output().unwrap(), one.wait_with_output().unwrap());
    assert!(zero.status.success() && one.status.success(), "node 0: {}\nnode 1: {}", String::from_utf8_lossy(&zero.stderr), String::from_utf8_lossy(&one.stderr));
    same_as_one_process(dir, "nodes");
}

#[test]
fn a_killed_rank_is_named_by_the_other_within_the_time_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let cfg = config(dir, "k", 50);
    let port = free_port().to_string();
    let rank = |r: &str| {
        dllm_rl()
            .current_dir(dir)
            .args(["-q", "train", "--config", cfg.to_str().unwrap()])
            .envs([("RANK", r), ("WORLD_SIZE", "2"), ("LOCAL_RANK", r), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)])
            .env("OMP_NUM_THREADS", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (zero, mut one) = (rank("0"), rank("1"));
    let started = Instant::now();
    while !dir.join("runs/k/checkpoints/step-1").exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint after 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    one.kill().unwrap();
    let _ = one.wait();
    let killed = Instant::now();
    let out = zero.wait_with_output().unwrap();
    assert!(killed.elapsed() < Duration::from_secs(60), "rank 0 took {:?} to give up", killed.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    eprintln!("{stderr}");
    assert!(stderr.contains("rank 1 never reached it"), "{stderr}");
    let status: String = rusqlite::Connection::open(dir.join("runs/k/store.sqlite")).unwrap().query_row("SELECT status FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "failed");
}

fn sft_config(dir: &Path, name: &str, steps: i64) -> PathBuf {
    let text = format!(
        r#"[run]
name = "{name}"
out_dir = "runs"
seed = 5
total_steps = {steps}
save_freq = 3

[model]
path = "model"

[data]
train_files = ["tasks.jsonl"]

[sft]
batch_size = 4
micro_batch_size = 1
max_response_tokens = 400

[optim]
lr = 0.003
weight_decay = 0.0
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `a` and `b` (two runs from the weights `start`) agree within 1e-5 of the largest weight, and
/// `a` moved at least `min_moved` from `start` (else the comparison would be empty).
fn same_weights(what: &str, start: &[f32], a: &[f32], b: &[f32], min_moved: f32) {
    assert_eq!(a.len(), b.len());
    let moved = start.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(moved > min_moved, "{what}: the weights did not move ({moved}): the comparison would be empty");
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("{what}: weights differ by up to {worst}, moved up to {moved}, largest weight {scale}");
    assert!(worst <= 1e-5 * scale.max(1.0), "{what}: weights differ by up to {worst} (largest {scale})");
}

fn sft_losses(dir: &Path, run: &str) -> Vec<f64> {
    let db = rusqlite::Connection::open(dir.join(format!("runs/{run}/store.sqlite"))).unwrap();
    let mut q = db.prepare("SELECT metrics ->> '$.loss' FROM steps ORDER BY step").unwrap();
    q.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
}

/// Full fine-tuning SFT with one process and with two ranks (each trains two of a step's four
/// micro-batches): the same losses and the same weights up to the order of the sums; a run of
/// two ranks resumes on one (SFT's batches do not depend on the world size).
#[test]
fn sft_on_two_ranks_is_sft_on_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    run(dir, &["sft", "--config", sft_config(dir, "sft-one", 3).to_str().unwrap()]);
    let out = torchrun(dir, 2, &["sft", "--config", sft_config(dir, "sft-two", 3).to_str().unwrap()]);
    assert!(out.status.success(), "torchrun: {}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (sft_losses(dir, "sft-one"), sft_losses(dir, "sft-two"));
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3, "only rank 0 writes the store");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "losses {a:?} and {b:?}");
    }
    let at = |run: &str| weights(&dir.join(format!("runs/{run}/checkpoints/step-3/model/model.safetensors")));
    same_weights("sft", &weights(&dir.join("model/model.safetensors")), &at("sft-one"), &at("sft-two"), 1e-3);
    run(dir, &["sft", "--resume", "--config", sft_config(dir, "sft-two", 4).to_str().unwrap()]);
    assert_eq!(sft_losses(dir, "sft-two").len(), 4);
}

/// The GRPO run of [`config`] as full fine-tuning (no adapters) at ZeRO stage `zero_stage`.
fn full_config(dir: &Path, name: &str, steps: i64, zero_stage: u8) -> PathBuf {
    let path = config(dir, name, steps);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("[model.lora]\nr = 4\nlora_alpha = 8.0\nlora_dropout = 0.0\n", "");
    let text = text.replace("[actor]\n", &format!("[actor]\nzero_stage = {zero_stage}\n")).replace("lr = 0.01", "lr = 0.001");
    std::fs::write(&path, text).unwrap();
    path
}

fn model_weights(dir: &Path, run: &str, step: i64) -> Vec<f32> {
    weights(&dir.join(format!("runs/{run}/checkpoints/step-{step}/model/model.safetensors")))
}

/// ZeRO-2 on two ranks against the whole optimizer in one process: the same first rollouts and,
/// one update later, the same weights up to the order of the sums; each rank saved its half of
/// the optimizer state (and no whole one exists); a run stopped after one step and resumed on
/// its two ranks ends exactly where the uninterrupted one does.
#[test]
fn zero2_on_two_ranks_trains_as_unsharded_and_resumes_from_its_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    run(dir, &["train", "--config", full_config(dir, "one", 2, 0).to_str().unwrap()]);
    let out = torchrun(dir, 2, &["train", "--config", full_config(dir, "zero", 2, 2).to_str().unwrap()]);
    assert!(out.status.success(), "torchrun: {}", String::from_utf8_lossy(&out.stderr));

    let (one, zero) = (rollouts(dir, "one"), rollouts(dir, "zero"));
    let first = |r: &[(i64, String, i64, String, Option<f64>)]| r.iter().filter(|x| x.0 == 0).cloned().collect::<Vec<_>>();
    assert_eq!(first(&one), first(&zero), "ZeRO-2 logged other rollouts than one process in its first step");
    let a = model_weights(dir, "one", 1);
    same_weights("zero-2 after one step", &weights(&dir.join("model/model.safetensors")), &a, &model_weights(dir, "zero", 1), 1e-5);

    // Half of the state each: ceil(N / 2) elements of masters and of both moments.
    let step1 = dir.join("runs/zero/checkpoints/step-1");
    assert!(!step1.join("optimizer.safetensors").exists(), "a whole optimizer state was written");
    for rank in 0..2 {
        let shard = weights(&step1.join(format!("optimizer.rank{rank}-of-2.safetensors")));
        assert_eq!(shard.len(), 3 * a.len().div_ceil(2), "rank {rank}'s shard");
    }

    // One step, stopped, resumed for the second on its two ranks: bit for bit the straight run.
    let out = torchrun(dir, 2, &["train", "--config", full_config(dir, "halves", 1, 2).to_str().unwrap()]);
    assert!(out.status.success(), "torchrun: {}", String::from_utf8_lossy(&out.stderr));
    let out = torchrun(dir, 2, &["train", "--resume", "--config", full_config(dir, "halves", 2, 2).to_str().unwrap()]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rollouts(dir, "halves"), zero, "the resumed run sampled otherwise");
    assert!(model_weights(dir, "halves", 2) == model_weights(dir, "zero", 2), "the resumed run ended elsewhere");
}
