//! `dllm-rl train`: the coupled-GRPO loop, its checkpoints and exact resume.
//!
//! A run lives in `<out_dir>/<name>/`: `store.sqlite` (every step and rollout, see
//! `docs/run-store.md`), `config.toml` (the resolved config), `checkpoints/step-N/` (adapters in
//! PEFT's layout or the full model in Hugging Face's, the optimizer state, the trainer state:
//! step and data cursor). A checkpoint is written to `step-N.tmp` and renamed, so a crash never
//! leaves half of one; `--resume` continues from the newest complete one. Every random choice
//! comes from the run seed and the step, so a resumed run repeats an uninterrupted one.

mod checkpoint;
pub mod config;
pub mod run_lock;
pub mod sft;
mod step;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use dllm_policy::{chat_prompt, ChatMessage, ChatTokenizer, DreamModel, LoraConfig, ParallelAdamW, Placement};
use dllm_dist::World;
use dllm_rollout::SpecialIds;
use dllm_prompts::Rendered;
use dllm_verifier::{PreparedTask, Task, Verifier};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::store::RunStore;
use checkpoint::write_checkpoint;
use config::{BackendName, TrainConfig};

/// What a checkpoint needs besides weights and optimizer: where the data order stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps completed.
    pub step: i64,
    /// Position in the current pass over the prompts.
    pub cursor: usize,
    /// Passes over the prompts started (seeds each pass's order).
    pub epoch: u64,
    /// Ranks of the run (checkpoints written before data parallel say nothing: 1).
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

impl Default for TrainerState {
    fn default() -> Self {
        TrainerState { step: 0, cursor: 0, epoch: 0, world_size: 1 }
    }
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: DreamModel,
    pub tokenizer: ChatTokenizer,
    pub special: SpecialIds,
    /// Usable tasks, their rendered and encoded prompts, their prepared tests.
    pub tasks: Vec<Task>,
    pub prompts: Vec<Vec<i64>>,
    pub prepared: Vec<PreparedTask>,
    pub verifier: Verifier,
    pub optimizer: ParallelAdamW,
    pub store: RunStore,
    pub state: TrainerState,
    /// The KL reference when it is not the base under LoRA adapters: the starting weights, frozen.
    pub reference: Option<DreamModel>,
    /// The other sandbox, for `verifier.cross_check`, with the tasks prepared for it.
    pub cross: Option<(Verifier, Vec<PreparedTask>)>,
    /// This process's rank among the run's (one process: a world of 1, no engine).
    pub world: World,
    /// The run's lock (rank 0), held as long as the trainer lives.
    _lock: Option<run_lock::RunLock>,
}

fn read_tasks(files: &[PathBuf]) -> anyhow::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for f in files {
        tasks.extend(dllm_prompts::read_jsonl::<Task>(f)?.into_iter().map(|(_, t)| t));
    }
    Ok(tasks)
}

/// A uniform draw in [0, 1) from 64 random bits (53 of them, as many as an f64 holds).
pub fn unit_draw(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `0..n` in an order drawn from `seed` (Fisher-Yates on a ChaCha8 stream).
pub fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

/// The next `count` indices of seeded passes over `0..n`, advancing the state's cursor (a new
/// order each pass): what a resumed run needs to continue the data exactly.
pub fn next_indices(state: &mut TrainerState, n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let order = seeded_permutation(n, dllm_policy::mask_seed(seed, state.epoch, 0x6461_7461));
        while state.cursor < n && out.len() < count {
            out.push(order[state.cursor]);
            state.cursor += 1;
        }
        if state.cursor == n {
            state.cursor = 0;
            state.epoch += 1;
        }
    }
    out
}

/// [`next_indices`] without repeats: when `n >= count`, the `count` indices come from one pass.
/// The end of a pass too short for a whole step is skipped (verl's dataloader drops its last
/// incomplete batch too): a prompt drawn twice in one RL step would make two groups of the same
/// prompt. Each pass has a new order, so the skipped ones differ from pass to pass. Only a step
/// larger than the set spans passes and repeats indices.
pub fn next_distinct_indices(state: &mut TrainerState, n: usize, count: usize, seed: u64) -> Vec<usize> {
    if count <= n && state.cursor + count > n {
        state.cursor = 0;
        state.epoch += 1;
    }
    next_indices(state, n, count, seed)
}

/// The chat-template text of a rendered prompt (a system turn only when the render has one).
pub fn chat_text(rendered: &Rendered) -> String {
    let mut messages = Vec::new();
    if let Some(system) = &rendered.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", &rendered.user));
    chat_prompt(&messages)
}

/// The newest complete checkpoint folder of a run, with its step.
pub(crate) fn latest_checkpoint(run_dir: &Path) -> Option<(i64, PathBuf)> {
    let entries = std::fs::read_dir(run_dir.join("checkpoints")).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step: i64 = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
}

/// Where a run starts: its newest checkpoint under `resume`, or afresh (`None`).
///
/// A run that failed before its first checkpoint has nothing to resume, and would otherwise
/// block its name for good: its store is set aside (`store.failed.sqlite`, replacing an older
/// one) and the run starts afresh, with or without `resume`. A run without a checkpoint whose
/// store still says `running` may be alive in another process (or was killed): the error says
/// what to remove.
pub(crate) fn starting_point(run_dir: &Path, resume: bool) -> anyhow::Result<Option<(i64, PathBuf)>> {
    let store_path = run_dir.join("store.sqlite");
    let checkpoint = latest_checkpoint(run_dir);
    if checkpoint.is_none() && store_path.exists() {
        let status: String = crate::store::open_read_only(&store_path)?
            .query_row("SELECT status FROM runs ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
            .with_context(|| format!("reading the run's status in {}", store_path.display()))?;
        if status != "failed" {
            bail!(
                "{} holds a run (status {status}) that never wrote a checkpoint, so there is nothing to resume. \
                 If no dllm-rl process is running it, remove {} (and its -wal and -shm files, if any) and start \
                 again without --resume; or choose another run.name",
                run_dir.display(),
                store_path.display()
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let from = run_dir.join(format!("store.sqlite{suffix}"));
            let to = run_dir.join(format!("store.failed.sqlite{suffix}"));
            let _ = std::fs::remove_file(&to);
            if from.exists() {
                std::fs::rename(&from, &to).with_context(|| format!("setting aside {}", from.display()))?;
            }
        }
        tracing::warn!("{}: the last attempt failed before its first checkpoint; starting afresh (its store: store.failed.sqlite)", run_dir.display());
        return Ok(None);
    }
    match (resume, checkpoint) {
        (true, None) => bail!("{}: no checkpoint to resume from", run_dir.display()),
        (true, found) => Ok(found),
        (false, _) if store_path.exists() => {
            bail!("{} already has a run; resume it with --resume, or choose another run.name", run_dir.display())
        }
        (false, _) => Ok(None),
    }
}

/// Keys a resumed run may change: they decide how long it runs and how often it saves, not what
/// it computes.
const RESUMABLE_KEYS: [&str; 3] = ["run.total_steps", "run.save_freq", "distributed.timeout_s"];

/// Refuses to resume under a config that differs from the one the run started with
/// (`config.toml` in the run folder) in anything but [`RESUMABLE_KEYS`]: the resumed steps would
/// silently belong to another experiment. The error names every changed key.
fn refuse_changed_config(run_dir: &Path, cfg: &TrainConfig) -> anyhow::Result<()> {
    let saved_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&saved_path).with_context(|| format!("reading the run's config {}", saved_path.display()))?;
    let mut saved: TrainConfig = toml::from_str(&text).with_context(|| format!("{}: invalid config", saved_path.display()))?;
    // Runs started before paths were made absolute stored them relative to the folder they were
    // started from; a resume is usually started from there too.
    let absolutize = |p: &mut PathBuf| {
        if p.is_relative() {
            if let Ok(a) = std::path::absolute(&*p) {
                *p = a.components().collect();
            }
        }
    };
    absolutize(&mut saved.model.path);
    absolutize(&mut saved.run.out_dir);
    saved.data.train_files.iter_mut().for_each(absolutize);
    let mut changed = Vec::new();
    changed_keys(&serde_json::to_value(&saved)?, &serde_json::to_value(cfg)?, "", &mut changed);
    changed.retain(|k| !RESUMABLE_KEYS.contains(&k.as_str()));
    if !changed.is_empty() {
        bail!(
            "the config differs from the one {} started with ({}) in: {}. A resumed run keeps its config (only {} may \
             change); set those keys back, or start a new run under another run.name",
            cfg.run.name,
            saved_path.display(),
            changed.join(", "),
            RESUMABLE_KEYS.join(" and ")
        );
    }
    Ok(())
}

/// The dotted keys whose values differ between two configs (as JSON); a key present in one
/// only counts as changed.
fn changed_keys(old: &serde_json::Value, new: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                changed_keys(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &path, out);
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// `path` made absolute (canonical where it exists), for paths written into files that other
/// programs read from elsewhere.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf())
}

/// A step's one-line summary: reward, pass rate, update statistics, then seconds per stage.
pub fn step_line(m: &serde_json::Value) -> String {
    let num = |key: &str| m[key].as_f64().unwrap_or(f64::NAN);
    let mut line = format!("reward {:.3}, solved {:.1}%", num("reward_mean"), 100.0 * num("solve_mean"));
    if m.get("skipped_update").is_some() {
        line.push_str(", no update (no informative group)");
    } else {
        line.push_str(&format!(", loss {:.4}, clip {:.3}, kl {:.4}", num("loss"), num("clip_fraction"), num("approx_kl")));
    }
    let stages: Vec<String> = ["rollout", "verify", "old_logprob", "update"]
        .iter()
        .filter_map(|s| m["seconds"][s].as_f64().map(|t| format!("{} {t:.1}", s.trim_end_matches("_logprob"))))
        .collect();
    line.push_str(&format!(" | {} | {:.1} s", stages.join(" · "), m["seconds"]["total"].as_f64().unwrap_or(f64::NAN)));
    line
}

impl Trainer {
    /// Sets a run up: fresh, or resumed from its newest checkpoint.
    /// Under a launcher, `world` holds this rank: rank 0 decides where the run starts, writes
    /// the store and the checkpoints; every rank reads the checkpoint (a shared file system
    /// across nodes) and starts from rank 0's weights.
    ///
    /// A start that fails before the run existed leaves no folder behind (an empty
    /// `runs/<name>/` with a lock and no checkpoint only misleads the next look).
    pub fn new(cfg: TrainConfig, resume: bool, world: World) -> anyhow::Result<Self> {
        let run_dir = cfg.run_dir();
        let fresh = world.is_main() && !run_dir.exists();
        let trainer = Self::start(cfg, resume, world);
        if trainer.is_err() && fresh {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        trainer
    }

    fn start(cfg: TrainConfig, resume: bool, world: World) -> anyhow::Result<Self> {
        let run_dir = cfg.run_dir();
        let store_path = run_dir.join("store.sqlite");
        // Rank 0 writes the run: it holds the run's lock before it looks at (or resets) it.
        let lock = if world.is_main() { Some(run_lock::RunLock::take(&run_dir, &cfg.run.name)?) } else { None };
        let checkpoint = if world.is_main() {
            let checkpoint = starting_point(&run_dir, resume)?;
            if checkpoint.is_some() {
                refuse_changed_config(&run_dir, &cfg)?;
            }
            std::fs::create_dir_all(run_dir.join("checkpoints")).with_context(|| format!("creating {}", run_dir.display()))?;
            checkpoint
        } else {
            None
        };
        let checkpoint = agree_on_checkpoint(&world, &run_dir, checkpoint)?;

        let mut placement = Placement::best_available();
        if placement.device.is_cuda() {
            placement.device = tch::Device::Cuda(world.local_rank);
        }
        let mut model = match (&checkpoint, &cfg.model.lora) {
            (Some((_, dir)), None) => DreamModel::load(&dir.join("model"), placement)?,
            _ => DreamModel::load(&cfg.model.path, placement).with_context(|| format!("loading {}", cfg.model.path.display()))?,
        };
        if let Some(lora) = &cfg.model.lora {
            match &checkpoint {
                Some((_, dir)) => model.load_lora(&dir.join("adapter"))?,
                None => {
                    let lora = LoraConfig {
                        r: lora.r,
                        lora_alpha: lora.lora_alpha,
                        lora_dropout: lora.lora_dropout,
                        target_modules: dllm_policy::lora::ModuleSet::List(lora.target_modules.clone()),
                        ..LoraConfig::default()
                    };
                    model.attach_lora(lora, (cfg.run.seed >> 1) as i64)?;
                }
            }
        }
        let tokenizer = ChatTokenizer::from_dir(&cfg.model.path, &model.config)?;
        let special = SpecialIds::from_config(&model.config, &tokenizer.stop_ids)?;
        // Full fine-tuning with a KL penalty keeps the starting weights as the reference.
        let reference = if cfg.actor.use_kl_loss && cfg.model.lora.is_none() {
            let mut frozen = DreamModel::load(&cfg.model.path, placement).with_context(|| format!("loading the KL reference {}", cfg.model.path.display()))?;
            frozen.vs.freeze();
            Some(frozen)
        } else {
            None
        };

        // Tasks: rendered, encoded, their tests prepared; unusable ones are reported and left out.
        // Ranks of one node share its cores.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let jobs = if cfg.verifier.jobs == 0 { (cores / world.local_world_size).max(1) } else { cfg.verifier.jobs };
        let backend = match cfg.verifier.backend {
            BackendName::Native => dllm_verifier::Backend::Native,
            BackendName::Wasm => dllm_verifier::Backend::Wasm,
        };
        let verifier = Verifier::new(backend, jobs).context("starting the sandbox")?.with_fail_fast(cfg.verifier.fail_fast(&cfg.reward));
        let all = read_tasks(&cfg.data.train_files)?;
        let prepared_all = verifier.prepare_all(all.clone());
        let (mut tasks, mut prompts, mut prepared) = (Vec::new(), Vec::new(), Vec::new());
        for (task, p) in all.into_iter().zip(prepared_all) {
            let rendered = match (cfg.data.render.render(&task), p) {
                (Ok(r), Ok(p)) => (r, p),
                (Err(e), _) => {
                    tracing::warn!("left out: {e}");
                    continue;
                }
                (_, Err(e)) => {
                    tracing::warn!("left out: {:#}", anyhow::Error::new(e));
                    continue;
                }
            };
            prompts.push(tokenizer.encode(&chat_text(&rendered.0))?);
            prepared.push(rendered.1);
            tasks.push(task);
        }
        if tasks.is_empty() {
            bail!("no usable task in {:?}", cfg.data.train_files);
        }
        let cross = if cfg.verifier.cross_check > 0.0 {
            let other = match backend {
                dllm_verifier::Backend::Native => dllm_verifier::Backend::Wasm,
                dllm_verifier::Backend::Wasm => dllm_verifier::Backend::Native,
            };
            let verifier = Verifier::new(other, jobs).context("starting the cross-check sandbox (verifier.cross_check)")?;
            let prepared = verifier.prepare_all(tasks.clone()).into_iter().collect::<Result<Vec<_>, _>>().context("preparing tasks for the cross-check sandbox")?;
            Some((verifier, prepared))
        } else {
            None
        };

        let params: Vec<(String, tch::Tensor)> = match &model.lora {
            Some(lora) => lora.vs.variables().into_iter().collect(),
            None => model.vs.variables().into_iter().collect(),
        };
        if cfg.actor.zero_stage >= 2 && world.size == 1 {
            tracing::info!("actor.zero_stage = 2 with one process: nothing to shard across, the optimizer state stays whole");
        }
        let mut optimizer = ParallelAdamW::new(params, cfg.optim.adamw(), cfg.actor.zero_stage, &world);
        let (store, state) = match &checkpoint {
            Some((step, dir)) => {
                let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(dir.join("trainer.json"))?)?;
                if state.world_size != world.size {
                    bail!(
                        "{} ran on {} rank(s) and this start has {}: resume it with {} (the data order, the optimizer \
                         and the sample seeds are those of its world size)",
                        cfg.run.name,
                        state.world_size,
                        world.size,
                        state.world_size
                    );
                }
                optimizer.load(dir)?;
                tracing::info!("resuming {} from step {step}", cfg.run.name);
                let store = if world.is_main() { RunStore::resume(&store_path, &cfg.run.name, *step)? } else { RunStore::written_elsewhere(&store_path) };
                (store, state)
            }
            None => {
                let store = if world.is_main() {
                    let resolved = serde_json::to_value(&cfg)?;
                    std::fs::write(run_dir.join("config.toml"), toml::to_string(&cfg)?)?;
                    RunStore::create(&store_path, &cfg.run.name, "train", &resolved)?
                } else {
                    RunStore::written_elsewhere(&store_path)
                };
                (store, TrainerState { world_size: world.size, ..TrainerState::default() })
            }
        };
        // Every rank starts from rank 0's weights (LoRA's initial draw included).
        world.broadcast_parameters(&optimizer.parameters()).context("broadcasting rank 0's weights")?;
        if world.size > 1 {
            tracing::info!("rank {} of {} ({}, {:?})", world.rank, world.size, world.launcher, world.backend());
        }
        Ok(Trainer { cfg, model, tokenizer, special, tasks, prompts, prepared, verifier, optimizer, store, state, reference, cross, world, _lock: lock })
    }

    /// The next `train_batch_size` prompts: passes over the tasks in a seeded order, no task
    /// twice in a step when there are enough of them.
    fn next_prompts(&mut self) -> Vec<usize> {
        next_distinct_indices(&mut self.state, self.tasks.len(), self.cfg.data.train_batch_size, self.cfg.run.seed)
    }

    /// Writes `checkpoints/step-N/` atomically (a temporary folder, then a rename).
    /// Every rank writes its part; none runs ahead of a checkpoint.
    pub fn checkpoint(&mut self) -> anyhow::Result<PathBuf> {
        let dir = write_checkpoint(&self.world, &self.cfg.run_dir(), &self.cfg.model.path, &self.model, &self.optimizer, &self.state)?;
        if self.world.is_main() {
            self.store.log_checkpoint(self.state.step, &dir)?;
        }
        Ok(dir)
    }

    /// One step, with libtorch's panics (tch panics on a failed op, CUDA out-of-memory included)
    /// turned into errors, and out-of-memory ones told which settings to lower.
    fn guarded_step(&mut self) -> anyhow::Result<serde_json::Value> {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.grpo_step()));
        let message = match outcome {
            Ok(result) => return result,
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into()),
        };
        if message.contains("out of memory") {
            bail!(
                "step {}: the GPU ran out of memory. Lower actor.ppo_micro_batch_size (now {}) or rollout.batch_size \
                 (now {}), keep actor.gradient_checkpointing on, or shorten rollout.sampler.max_new_tokens; \
                 then resume with --resume. ({message})",
                self.state.step,
                self.cfg.actor.ppo_micro_batch_size,
                self.cfg.rollout.batch_size
            );
        }
        bail!("step {} failed in libtorch: {message}", self.state.step)
    }

    /// Runs steps until `run.total_steps` or until `stop` is set (then checkpoints and returns);
    /// `checkpoint_now` set writes a checkpoint after the current step and goes on.
    /// On an error the run's status becomes `failed`.
    pub fn run(&mut self, stop: &AtomicBool, checkpoint_now: &AtomicBool, on_step: &mut dyn FnMut(i64, &serde_json::Value)) -> anyhow::Result<()> {
        let outcome = self.run_steps(stop, checkpoint_now, on_step);
        self.store.failed_on_error(outcome)
    }

    fn run_steps(&mut self, stop: &AtomicBool, checkpoint_now: &AtomicBool, on_step: &mut dyn FnMut(i64, &serde_json::Value)) -> anyhow::Result<()> {
        let mut idle = 0;
        while self.state.step < self.cfg.run.total_steps {
            let metrics = self.guarded_step()?;
            // A run where every group is solved by all or none of its samples learns nothing.
            idle = if metrics.get("skipped_update").is_some() { idle + 1 } else { 0 };
            if idle == 5 {
                tracing::warn!(
                    "no update for 5 steps: every prompt's samples all pass or all fail, so nothing is learned. \
                     Choose prompts the model solves sometimes (dllm-rl prompts difficulty), raise rollout.n, \
                     or, if rewards collapsed to 0 after an update, lower optim.lr"
                );
            }
            self.store.log_step(self.state.step, metrics.clone())?;
            on_step(self.state.step, &metrics);
            self.state.step += 1;
            let due = self.state.step % self.cfg.run.save_freq == 0 || self.state.step == self.cfg.run.total_steps;
            // One rank's Ctrl-C (or SIGTERM) stops all of them after the same step.
            // So does one rank's SIGUSR1 ask all of them for a checkpoint now.
            let mut votes = [f64::from(u8::from(stop.load(Ordering::Relaxed))), f64::from(u8::from(checkpoint_now.swap(false, Ordering::Relaxed)))];
            self.world.sum_f64(&mut votes)?;
            let (stopping, asked) = (votes[0] > 0.0, votes[1] > 0.0);
            if asked && !due && !stopping && self.world.is_main() {
                tracing::info!("checkpoint asked for (SIGUSR1)");
            }
            if due || stopping || asked {
                let path = self.checkpoint()?;
                if self.world.is_main() {
                    tracing::info!("checkpoint: {}", path.display());
                }
            }
            self.store.flush()?;
            if stopping {
                tracing::info!("interrupted: stopped after step {} with a checkpoint", self.state.step);
                self.store.set_status("interrupted")?;
                self.store.flush()?;
                return Ok(());
            }
        }
        self.store.set_status("finished")?;
        self.store.flush()?;
        // Rank 0 may host the rendezvous store: nobody leaves before everyone is done.
        self.world.barrier()?;
        Ok(())
    }
}

/// Every rank learns where rank 0 starts the run (`None`: afresh) and checks that it sees that
/// checkpoint too.
pub(crate) fn agree_on_checkpoint(world: &World, run_dir: &Path, mine: Option<(i64, PathBuf)>) -> anyhow::Result<Option<(i64, PathBuf)>> {
    if world.size == 1 {
        return Ok(mine);
    }
    let mut step = tch::Tensor::from_slice(&[mine.as_ref().map_or(-1i64, |(s, _)| *s)]);
    world.broadcast(&mut step, 0).context("learning rank 0's starting point")?;
    let step = step.int64_value(&[0]);
    if step < 0 {
        return Ok(None);
    }
    let dir = run_dir.join("checkpoints").join(format!("step-{step}"));
    if !dir.join("trainer.json").exists() {
        bail!(
            "rank {} cannot see rank 0's checkpoint {}: ranks on several nodes need the run folder (run.out_dir) on a shared file system",
            world.rank,
            dir.display()
        );
    }
    Ok(Some((step, dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_stored_with_relative_paths_resumes_with_absolute_ones() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[run]\nname = \"r\"\ntotal_steps = 3\n[model]\npath = \"m\"\n[data]\ntrain_files = [\"t.jsonl\"]\n";
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        let mut cfg: TrainConfig = toml::from_str(text).unwrap();
        // What from_file now resolves them to (the saved ones were relative to the cwd).
        cfg.model.path = std::path::absolute("m").unwrap();
        cfg.data.train_files = vec![std::path::absolute("t.jsonl").unwrap()];
        cfg.run.out_dir = std::path::absolute(&cfg.run.out_dir).unwrap().components().collect();
        refuse_changed_config(dir.path(), &cfg).unwrap();
        cfg.model.path = std::path::absolute("other").unwrap();
        let err = refuse_changed_config(dir.path(), &cfg).unwrap_err().to_string();
        assert!(err.contains("in: model.path."), "{err}");
    }

    #[test]
    fn a_changed_config_is_named_key_by_key() {
        let old = serde_json::json!({"run": {"total_steps": 4, "seed": 7}, "optim": {"lr": 0.01, "betas": [0.9, 0.999]}});
        let new = serde_json::json!({"run": {"total_steps": 8, "seed": 7}, "optim": {"lr": 0.02, "betas": [0.9, 0.99]}, "x": 1});
        let mut changed = Vec::new();
        changed_keys(&old, &new, "", &mut changed);
        assert_eq!(changed, ["optim.betas", "optim.lr", "run.total_steps", "x"]);
    }

    #[test]
    fn a_resume_refuses_a_changed_config_and_names_the_keys() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["dream-coder-7b-lora.toml", "dream-coder-7b-full.toml", "quickstart.toml"] {
            let cfg = TrainConfig::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)).unwrap();
            // As a fresh run writes it.
            std::fs::write(tmp.path().join("config.toml"), toml::to_string(&cfg).unwrap()).unwrap();
            refuse_changed_config(tmp.path(), &cfg).unwrap_or_else(|e| panic!("{name}: its own config is refused: {e:#}"));
            let mut longer = cfg.clone();
            longer.run.total_steps += 100;
            longer.run.save_freq += 1;
            refuse_changed_config(tmp.path(), &longer).unwrap();
            let mut other = cfg.clone();
            other.optim.lr *= 2.0;
            other.actor.ppo_epochs += 1;
            other.run.total_steps += 100;
            let err = refuse_changed_config(tmp.path(), &other).unwrap_err().to_string();
            assert!(err.contains("in: actor.ppo_epochs, optim.lr. "), "{name}: {err}");
        }
    }

    #[test]
    fn a_run_that_failed_before_its_first_checkpoint_starts_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("r");
        std::fs::create_dir_all(run_dir.join("checkpoints")).unwrap();
        let store_path = run_dir.join("store.sqlite");
        let store = RunStore::create(&store_path, "r", "train", &serde_json::json!({})).unwrap();
        store.flush().unwrap();
        // Still `running` (alive elsewhere, or killed): refused, with what to remove.
        for resume in [false, true] {
            let err = starting_point(&run_dir, resume).unwrap_err().to_string();
            assert!(err.contains("never wrote a checkpoint") && err.contains(&store_path.display().to_string()), "{err}");
        }
        store.set_status("failed").unwrap();
        store.flush().unwrap();
        drop(store);
        // Failed: a rerun, with or without --resume, starts afresh and keeps the old store aside.
        assert!(starting_point(&run_dir, true).unwrap().is_none());
        assert!(!store_path.exists() && run_dir.join("store.failed.sqlite").exists());
        assert!(starting_point(&run_dir, false).unwrap().is_none());
        assert!(starting_point(&run_dir, true).unwrap_err().to_string().contains("no checkpoint to resume from"));
    }

    #[test]
    fn a_step_never_draws_a_task_twice_when_there_are_enough() {
        // 5 tasks, 2 a step: a pass ends with 1 task left, which the next step skips.
        let mut state = TrainerState::default();
        let mut per_pass: std::collections::HashMap<u64, Vec<usize>> = std::collections::HashMap::new();
        for _ in 0..40 {
            let before = state;
            let step = next_distinct_indices(&mut state, 5, 2, 9);
            assert!(step[0] != step[1], "{step:?} after {before:?}");
            let pass = if before.cursor + 2 > 5 { before.epoch + 1 } else { before.epoch };
            per_pass.entry(pass).or_default().extend(step);
        }
        for (pass, seen) in &per_pass {
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), seen.len(), "pass {pass} repeats a task: {seen:?}");
        }
        // The skipped task changes from pass to pass.
        let skipped: std::collections::HashSet<usize> =
            per_pass.values().filter(|s| s.len() == 4).map(|s| (0..5).find(|t| !s.contains(t)).unwrap()).collect();
        assert!(skipped.len() > 1, "{skipped:?}");
        // A resumed state continues the same way.
        let mut a = TrainerState { step: 0, cursor: 3, epoch: 2, world_size: 1 };
        let mut b = a;
        assert_eq!(next_distinct_indices(&mut a, 5, 2, 9), next_distinct_indices(&mut b, 5, 2, 9));
        // A step larger than the set takes every task, repeating some.
        let mut state = TrainerState::default();
        let step = next_distinct_indices(&mut state, 3, 5, 9);
        assert_eq!(step.len(), 5);
        assert!((0..3).all(|t| step.contains(&t)));
    }
}
