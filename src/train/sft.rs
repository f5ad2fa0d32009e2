//! `dllm-rl sft`: supervised fine-tuning with the masked-diffusion objective on prompt /
//! reference-solution pairs (Dream-Coder's SFT stage).
//!
//! Each row is `[prompt, answer, eos, pad...]` with the response canvas `max_response_tokens`
//! long (prompts left-padded within a micro-batch, with a padding mask). Per row, t ~ U(eps, 1)
//! and each response position is masked with probability t (at least one); the loss is the
//! cross-entropy of the true tokens at masked positions with 1/t weights (or CART), divided by
//! the number of masked tokens, as Dream-Coder's SFT loss is. `random_truncation` cuts a
//! micro-batch's trailing padding to a random length between its longest answer and the canvas
//! (our reading of Dream-Coder's `perbatch_cutoff`: fewer pad targets, less EOS overflow).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use dllm_policy::estimator::token_weights;
use dllm_policy::{mask_seed, BackwardOptions, ChatTokenizer, DreamModel, ParallelAdamW, Pass, Placement, ScoredBatch, TokenWeighting};
use dllm_prompts::RenderConfig;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use dllm_dist::World;

use super::config::{DistributedSection, ModelSection, OptimSection, RunSection};
use super::{chat_text, latest_checkpoint, next_indices, write_checkpoint, TrainerState};
use crate::store::RunStore;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    pub run: RunSection,
    pub model: ModelSection,
    pub data: SftData,
    #[serde(default)]
    pub sft: SftSection,
    #[serde(default = "sft_optim")]
    pub optim: OptimSection,
    #[serde(default)]
    pub distributed: DistributedSection,
}

/// The optimizer of Dream-Coder's SFT stage (`run_sft.sh`): lr 5e-6, ten times its RL rate;
/// the rest as in RL.
fn sft_optim() -> OptimSection {
    OptimSection { lr: 5e-6, ..OptimSection::default() }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftData {
    /// Canonical task files; each task's `reference` is the target answer.
    pub train_files: Vec<PathBuf>,
    #[serde(default)]
    pub render: RenderConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    /// Rows per optimizer step.
    pub batch_size: usize,
    pub micro_batch_size: usize,
    /// The response canvas: answer, eos and padding.
    pub max_response_tokens: usize,
    /// CART's p; `None`: 1/t weights.
    pub context_adaptive_reweight_p: Option<f64>,
    pub no_loss_on_pad: bool,
    pub random_truncation: bool,
    /// Smallest masking probability.
    pub eps: f64,
    pub grad_clip: f64,
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            batch_size: 32,
            micro_batch_size: 16,
            max_response_tokens: 256,
            context_adaptive_reweight_p: None,
            no_loss_on_pad: false,
            random_truncation: true,
            eps: 1e-3,
            grad_clip: 1.0,
        }
    }
}

impl SftConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut cfg: SftConfig = toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        if cfg.distributed.timeout_s == 0 {
            bail!("{}: distributed.timeout_s must be at least 1 (seconds)", path.display());
        }
        super::config::resolve_paths(path, [&mut cfg.model.path, &mut cfg.run.out_dir].into_iter().chain(cfg.data.train_files.iter_mut()))?;
        Ok(cfg)
    }
}

/// The answer a model should write for a reference solution: one fenced Python block.
pub fn answer_text(reference: &str) -> String {
    format!("```python\n{}\n```", reference.trim_end())
}

/// A prompt and its target response canvas (answer + eos + pad), as token ids.
struct Pair {
    prompt: Vec<i64>,
    response: Vec<i64>,
    /// Tokens of the answer and its eos.
    answer_len: usize,
}

/// Runs SFT to `run.total_steps` (resuming when asked) and returns the final checkpoint folder
/// (a full model in Hugging Face layout, or adapters).
///
/// Under a launcher every rank builds the same batch (same rows, truncation and masks: the
/// draws come from the step's seed) and trains its contiguous share of the micro-batches;
/// gradients, the masked-token count that divides the loss, and the loss are summed across
/// ranks, so a step is one process's step up to the order of the sums. Rank 0 alone writes the
/// store and the checkpoints. Unlike RL, nothing depends on the world size, so a run may
/// resume on another one.
///
/// A start that fails before the run existed leaves no folder behind (as for RL runs).
pub fn run_sft(cfg: &SftConfig, resume: bool, world: &World, on_step: &mut dyn FnMut(i64, &serde_json::Value)) -> anyhow::Result<PathBuf> {
    let run_dir = cfg.run.out_dir.join(&cfg.run.name);
    let fresh = world.is_main() && !run_dir.exists();
    let outcome = sft_steps(cfg, resume, world, on_step);
    // Only a run that never made its store is removed (checkpoints come after the store).
    if outcome.is_err() && fresh && !run_dir.join("store.sqlite").exists() {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    outcome
}

fn sft_steps(cfg: &SftConfig, resume: bool, world: &World, on_step: &mut dyn FnMut(i64, &serde_json::Value)) -> anyhow::Result<PathBuf> {
    let run_dir = cfg.run.out_dir.join(&cfg.run.name);
    let store_path = run_dir.join("store.sqlite");
    // As for RL runs: the newest checkpoint, or afresh (also after a run that failed before its
    // first checkpoint); `--resume` without a checkpoint is an error, not a second run.
    // Rank 0 writes the run: it holds the run's lock before it looks at (or resets) it.
    let _lock = if world.is_main() { Some(super::run_lock::RunLock::take(&run_dir, &cfg.run.name)?) } else { None };
    let checkpoint = if world.is_main() {
        let checkpoint = super::starting_point(&run_dir, resume)?;
        std::fs::create_dir_all(run_dir.join("checkpoints"))?;
        checkpoint
    } else {
        None
    };
    let checkpoint = super::agree_on_checkpoint(world, &run_dir, checkpoint)?;
    let mut placement = Placement::best_available();
    if placement.device.is_cuda() {
        placement.device = tch::Device::Cuda(world.local_rank);
    }
    let mut model = match &checkpoint {
        Some((_, dir)) if cfg.model.lora.is_none() => DreamModel::load(&dir.join("model"), placement)?,
        _ => DreamModel::load(&cfg.model.path, placement).with_context(|| format!("loading {}", cfg.model.path.display()))?,
    };
    if let Some(l) = &cfg.model.lora {
        match &checkpoint {
            Some((_, dir)) => model.load_lora(&dir.join("adapter"))?,
            None => model.attach_lora(
                dllm_policy::LoraConfig {
                    r: l.r,
                    lora_alpha: l.lora_alpha,
                    lora_dropout: l.lora_dropout,
                    target_modules: dllm_policy::lora::ModuleSet::List(l.target_modules.clone()),
                    ..dllm_policy::LoraConfig::default()
                },
                (cfg.run.seed >> 1) as i64,
            )?,
        }
    }
    let tokenizer = ChatTokenizer::from_dir(&cfg.model.path, &model.config)?;
    let pad = model.config.tokens.pad.or(model.config.tokens.eos.first().copied()).context("the model names no pad or eos token")?;
    let eos = model.config.tokens.eos.first().copied().unwrap_or(pad);
    let n = cfg.sft.max_response_tokens;

    let mut pairs = Vec::new();
    for file in &cfg.data.train_files {
        for (line, task) in dllm_prompts::read_jsonl::<dllm_verifier::Task>(file)? {
            let Some(reference) = &task.reference else { continue };
            let rendered = cfg.data.render.render(&task)?;
            let prompt = tokenizer.encode(&chat_text(&rendered))?;
            let mut response = tokenizer.encode(&answer_text(reference))?;
            response.push(eos);
            if response.len() > n {
                tracing::warn!("{}:{line}: answer of {} tokens exceeds max_response_tokens {n}; left out", file.display(), response.len());
                continue;
            }
            let answer_len = response.len();
            response.resize(n, pad);
            pairs.push(Pair { prompt, response, answer_len });
        }
    }
    if pairs.is_empty() {
        bail!("no task with a reference solution in {:?}", cfg.data.train_files);
    }

    let params: Vec<(String, Tensor)> = match &model.lora {
        Some(l) => l.vs.variables().into_iter().collect(),
        None => model.vs.variables().into_iter().collect(),
    };
    let mut optimizer = ParallelAdamW::new(params, cfg.optim.adamw(), 0, &world);
    let (store, mut state) = match &checkpoint {
        Some((step, dir)) => {
            optimizer.load(dir)?;
            let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(dir.join("trainer.json"))?)?;
            let store = if world.is_main() { RunStore::resume(&store_path, &cfg.run.name, *step)? } else { RunStore::written_elsewhere(&store_path) };
            (store, state)
        }
        None => {
            let store = if world.is_main() {
                RunStore::create(&store_path, &cfg.run.name, "sft", &serde_json::to_value(cfg)?)?
            } else {
                RunStore::written_elsewhere(&store_path)
            };
            (store, TrainerState { world_size: world.size, ..TrainerState::default() })
        }
    };
    // Every rank starts from rank 0's weights (LoRA's initial draw included).
    world.broadcast_parameters(&optimizer.parameters()).context("broadcasting rank 0's weights")?;
    let weighting = match cfg.sft.context_adaptive_reweight_p {
        Some(p) => TokenWeighting::Cart { p },
        None => TokenWeighting::InverseT,
    };
    let device = placement.device;
    // Every error from here on leaves the run `failed` in its store.
    let outcome = (|| -> anyhow::Result<Option<PathBuf>> {
        let mut last = None;
        while state.step < cfg.run.total_steps {
            let started = Instant::now();
            let step = state.step;
            tch::manual_seed((mask_seed(cfg.run.seed, step as u64, 0x0073_6674) >> 1) as i64);
            let rows = next_indices(&mut state, pairs.len(), cfg.sft.batch_size, cfg.run.seed);
            let mut rng = ChaCha8Rng::seed_from_u64(mask_seed(cfg.run.seed, step as u64, 0x6d61_736b));
            let uniform = |rng: &mut ChaCha8Rng| ((rng.next_u64() >> 40) as f64 + 0.5) / (1u64 << 24) as f64;
            // Build every micro-batch first: the loss divides by the masked count of the whole batch.
            let chunks: Vec<&[usize]> = rows.chunks(cfg.sft.micro_batch_size.max(1)).collect();
            let mine = world.share(chunks.len());
            let mut micro = Vec::new();
            for (index, chunk) in chunks.into_iter().enumerate() {
                let longest_answer = chunk.iter().map(|&r| pairs[r].answer_len).max().unwrap_or(1);
                let len_r = if cfg.sft.random_truncation { longest_answer + (uniform(&mut rng) * (n - longest_answer + 1) as f64) as usize } else { n }.min(n);
                let p = chunk.iter().map(|&r| pairs[r].prompt.len()).max().unwrap_or(0);
                let (mut ids, mut attention, mut mask) = (Vec::new(), Vec::new(), Vec::new());
                let mut ts = Vec::new();
                for &r in chunk {
                    let pair = &pairs[r];
                    let left = p - pair.prompt.len();
                    ids.extend(std::iter::repeat_n(pad, left).chain(pair.prompt.iter().copied()).chain(pair.response[..len_r].iter().copied()));
                    attention.extend(std::iter::repeat_n(0i64, left).chain(std::iter::repeat_n(1, pair.prompt.len() + len_r)));
                    let t = cfg.sft.eps + (1.0 - cfg.sft.eps) * uniform(&mut rng);
                    ts.push(t as f32);
                    let mut row: Vec<bool> = (0..len_r).map(|_| uniform(&mut rng) < t).collect();
                    if !row.iter().any(|&m| m) {
                        let i = (rng.next_u64() % len_r as u64) as usize;
                        row[i] = true;
                    }
                    mask.extend(std::iter::repeat_n(false, p).chain(row));
                }
                // Every rank draws every micro-batch (the stream must stay the same on all of
                // them); only this rank's share becomes tensors.
                if !mine.contains(&index) {
                    continue;
                }
                let b = chunk.len() as i64;
                let shape = [b, (p + len_r) as i64];
                let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
                let ragged = attention.contains(&0);
                let attention = ragged.then(|| Tensor::from_slice(&attention).view(shape).to_device(device));
                let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
                let response = Tensor::arange(shape[1], (Kind::Int64, device)).ge(p as i64).unsqueeze(0).expand(shape, false);
                let t = Tensor::from_slice(&ts).to_device(device);
                let weights = token_weights(&mask, &response, &t, weighting, &ids, cfg.sft.no_loss_on_pad.then_some(pad));
                let batch = ScoredBatch::new(&model, &ids, &mask, attention.as_ref())?;
                let w = batch.flatten(&weights.loss);
                micro.push((batch, w));
            }
            let mut counts = [micro.iter().map(|(b, _)| b.positions.sum(Kind::Int64).int64_value(&[])).sum::<i64>() as f64];
            world.sum_f64(&mut counts)?;
            let masked = counts[0] as i64;
            optimizer.zero_grad();
            let mut loss_sum = 0.0;
            for (batch, w) in &micro {
                let objective = |lp: &Tensor, start: i64| (-lp * w.narrow(0, start, lp.size()[0])).sum(Kind::Float) / masked.max(1) as f64;
                let (_, loss) = model.backward_scored(batch, Pass::TRAIN, BackwardOptions { recompute: true, head_chunk: None }, &objective)?;
                loss_sum += loss;
            }
            let grad_norm = optimizer.reduce_and_clip(&world, cfg.sft.grad_clip).context("summing gradients across ranks")?;
            let mut losses = [loss_sum];
            world.sum_f64(&mut losses)?;
            let loss_sum = losses[0];
            let lr = cfg.optim.lr_schedule.lr(cfg.optim.lr, optimizer.steps_taken());
            optimizer.set_lr(lr);
            optimizer.step(&world)?;
            let metrics = serde_json::json!({"loss": loss_sum, "masked_tokens": masked, "grad_norm": grad_norm, "lr": lr,
                                             "seconds": {"total": started.elapsed().as_secs_f64()}});
            store.log_step(step, metrics.clone())?;
            on_step(step, &metrics);
            state.step += 1;
            if state.step % cfg.run.save_freq == 0 || state.step == cfg.run.total_steps {
                // Every rank writes its part; none runs ahead of a checkpoint.
                let dir = write_checkpoint(&world, &run_dir, &cfg.model.path, &model, &optimizer, &state)?;
                if world.is_main() {
                    store.log_checkpoint(state.step, &dir)?;
                }
                last = Some(dir);
            }
        }
        Ok(last)
    })();
    let last = store.failed_on_error(outcome)?;
    store.set_status("finished")?;
    store.flush()?;
    // Rank 0 may host the rendezvous store: nobody leaves before everyone is done.
    world.barrier()?;
    let last = last.or_else(|| latest_checkpoint(&run_dir).map(|(_, d)| d)).context("no checkpoint written")?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_an_optim_section_the_rate_is_dream_coders_sft_rate() {
        let cfg: super::SftConfig = toml::from_str(
            "[run]\nname = \"s\"\ntotal_steps = 1\n[model]\npath = \"m\"\n[data]\ntrain_files = [\"t.jsonl\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.optim.lr, 5e-6);
    }
}
