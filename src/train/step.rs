//! One coupled-GRPO step, stage by stage, as Dream-Coder's recipe runs it
//! (`../shared/research/dllm_rl.md` §3.1): sample prompts → roll out G samples each → verify →
//! rewards → group advantages → informative substitution → coupled masks → old log-probs →
//! PPO epochs (each: both masks of every row, micro-batches accumulated, one optimizer step).
//!
//! Where it departs from that recipe (README, "Training"): the loss is a token-mean over the
//! whole mini-batch, not per micro-batch; one noise level and mask pattern per epoch for the
//! whole batch by default (`actor.mask_sharing = "micro_batch"` draws several, as Dream-Coder's
//! one per GPU does); full fine-tuning accumulates gradients in bf16 on a GPU; a completion the
//! sandbox failed on twice is left out of the update rather than scored.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context};
use dllm_policy::estimator::token_weights;
use dllm_policy::grpo::{k3, ppo_terms, weighted_loss, ClipRange};
use dllm_policy::{coupled_masks, mask_seed, BackwardOptions, DreamModel, MaskSeeds, Pass, ScoredBatch};
use dllm_rewards::{
    backend_disagreement, code_signals, informative_substitution, judged_group_advantages, test_data_in_code, HackSignal, Judged, RewardConfig,
    SolveStats,
};
use dllm_rollout::{generate, rollout_seed, Batching, Request, Rollout};
use dllm_verifier::{Completion, TaskVerdict, TestSpec};
use tch::{Kind, Tensor};

use super::config::{MaskSharing, TokenMean};
use super::Trainer;
use crate::store::{PromptRecord, RolloutRecord, TestRecord};

/// One sample of the step, judged. Ranks exchange them (as JSON) after judging their share.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sample {
    task: usize,
    rollout: Rollout,
    text: String,
    tokens: usize,
    /// Each completion token's text (for the decode order in the store).
    pieces: Vec<String>,
    verdict: TaskVerdict,
    /// `None` when the sandbox spoiled the verdict, and again when it was judged once more: the
    /// sample is left out of its group's statistics and of the loss, and logged without a reward.
    reward: Option<f64>,
    components: Option<serde_json::Value>,
    /// Signals found beyond the code rules (a sandbox disagreement).
    signals: Vec<HackSignal>,
}

/// A completion as the judging thread hands it back.
struct Decoded {
    text: String,
    tokens: usize,
    pieces: Vec<String>,
    verdict: TaskVerdict,
}

/// One coupled-mask pass of a micro-batch, scored before the update: the log-probs of the
/// policy that sampled (and of the KL reference), flattened to the scored tokens.
struct ScoredPass {
    /// Its place among the epoch's passes of all ranks: 2 · micro-batch + 0 or 1 (the two
    /// coupled passes of a micro-batch are neighbours).
    slot: usize,
    batch: ScoredBatch,
    loss_weights: Tensor,
    norm_weights: Tensor,
    old: Tensor,
    reference: Option<Tensor>,
    advantages: Tensor,
}

/// The rows one PPO micro-batch trains on: samples whose prompts have one length (no padding).
struct MicroBatch {
    /// (B, P + N) int64.
    sequences: Tensor,
    prompt_len: i64,
    /// (B,) fp32.
    advantages: Tensor,
}

/// Judges a seeded `fraction` of the passing samples again in the other sandbox; a different
/// verdict becomes a `backend_disagreement` signal on the sample (its reward is unchanged).
/// Returns (judged again, disagreements).
fn cross_check(
    other: &dllm_verifier::Verifier,
    prepared: &[dllm_verifier::PreparedTask],
    main_is_native: bool,
    fraction: f64,
    seed: u64,
    samples: &mut [Sample],
) -> (usize, usize) {
    // Each sample's draw comes from its own (prompt slot, sample) key, so the choice does not
    // depend on which rank judges it.
    let chosen: Vec<usize> = (0..samples.len())
        .filter(|&i| {
            let key = &samples[i].rollout;
            let draw = super::unit_draw(mask_seed(seed, key.request as u64, key.sample as u64));
            samples[i].verdict.all_passed && draw < fraction
        })
        .collect();
    if chosen.is_empty() {
        return (0, 0);
    }
    let ready: Vec<dllm_verifier::PreparedTask> = chosen.iter().map(|&i| prepared[samples[i].task].clone()).collect();
    let completions: Vec<Completion> = chosen.iter().enumerate().map(|(slot, &i)| Completion { task: slot, text: samples[i].text.clone() }).collect();
    let again = other.verify_batch(&ready, &completions, &|_| {});
    let mut disagreements = 0;
    for (&i, theirs) in chosen.iter().zip(&again) {
        let (native, wasm) = if main_is_native { (&samples[i].verdict, theirs) } else { (theirs, &samples[i].verdict) };
        if let Some(signal) = backend_disagreement(native, wasm) {
            disagreements += 1;
            samples[i].signals.push(signal);
        }
    }
    (chosen.len(), disagreements)
}

/// A completion's reward and its components; `None` for a verdict the sandbox spoiled, which
/// says nothing about the completion (`dllm_rewards::reward`).
fn reward_of(cfg: &RewardConfig, text: &str, tokens: usize, verdict: &TaskVerdict) -> (Option<f64>, Option<serde_json::Value>) {
    match cfg.reward(&Judged { completion: text, tokens, verdict }) {
        Ok(r) => (Some(r.total), serde_json::to_value(&r.components).ok()),
        Err(_) => (None, None),
    }
}

/// Judges (task index, completion) pairs, one verdict each.
type BatchJudge<'a> = dyn Fn(&[(usize, String)]) -> Vec<TaskVerdict> + 'a;

/// Judges once more the samples whose verdict the sandbox spoiled (a crashed or overloaded
/// sandbox is usually transient); `judge` gets their (task, completion) pairs and returns one
/// verdict each. Those still spoiled keep no reward. Returns how many were judged again.
fn rejudge_sandbox_failures(
    samples: &mut [Sample],
    cfg: &RewardConfig,
    judge: &BatchJudge,
) -> usize {
    let failed: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].reward.is_none()).collect();
    if failed.is_empty() {
        return 0;
    }
    let items: Vec<(usize, String)> = failed.iter().map(|&i| (samples[i].task, samples[i].text.clone())).collect();
    for (&i, verdict) in failed.iter().zip(judge(&items)) {
        let s = &mut samples[i];
        (s.reward, s.components) = reward_of(cfg, &s.text, s.tokens, &verdict);
        s.verdict = verdict;
    }
    failed.len()
}

/// The rows a step trains on: (sample, advantage) for every sample of each slot's source
/// group, except the samples without a reward (they get no loss and stay out of the
/// token-mean's normaliser).
fn training_rows(
    groups: &[Vec<usize>],
    advantages: &[Vec<f64>],
    source: &[usize],
    rewarded: &dyn Fn(usize) -> bool,
) -> Vec<(usize, f32)> {
    let group_rows = |g: usize| groups[g].iter().zip(&advantages[g]).filter(|(&i, _)| rewarded(i)).map(|(&i, &a)| (i, a as f32));
    source.iter().flat_map(|&g| group_rows(g)).collect()
}

/// Each request's rollout seeds, from the run seed, the step, the task and the sample. A task
/// drawn more than once in a step (only when the step is larger than the task set) mixes its
/// occurrence in, so that its copies decode differently; a first occurrence keeps the plain seeds.
fn request_seeds(run_seed: u64, step: u64, chosen: &[usize], tasks: usize, n: usize) -> Vec<Vec<u64>> {
    let mut seen: HashMap<usize, u64> = HashMap::new();
    chosen
        .iter()
        .map(|&t| {
            let occurrence = seen.entry(t).or_insert(0);
            let key = t as u64 + *occurrence * tasks as u64;
            *occurrence += 1;
            (0..n as u64).map(|s| rollout_seed(run_seed, step, key, s)).collect()
        })
        .collect()
}

/// Each pass's divisor of Σ w·L, from its micro-batch and its Σ w: the epoch's total Σ w, or
/// (`TokenMean::MicroBatch`) its micro-batch's Σ w times the number of micro-batches.
fn token_mean_normalisers(micro_batches: &[usize], sums: &[f64], mode: TokenMean) -> Vec<f64> {
    match mode {
        TokenMean::MiniBatch => vec![sums.iter().sum(); sums.len()],
        TokenMean::MicroBatch => {
            let mut per_micro_batch: HashMap<usize, f64> = HashMap::new();
            for (&b, &w) in micro_batches.iter().zip(sums) {
                *per_micro_batch.entry(b).or_default() += w;
            }
            let count = per_micro_batch.len() as f64;
            micro_batches.iter().map(|b| per_micro_batch[b] * count).collect()
        }
    }
}

/// The log-probs of the policy that sampled, for the PPO ratio: in eval mode, without LoRA
/// dropout, as verl computes them (`compute_log_prob` runs the actor in eval mode). They are
/// then a function of the weights alone: the same whatever libtorch's generator holds.
fn old_logprobs(model: &DreamModel, batch: &ScoredBatch) -> dllm_policy::Result<Tensor> {
    tch::no_grad(|| model.score(batch, Pass::EVAL))
}

impl Trainer {
    /// Runs step `self.state.step` and returns its metrics.
    pub(super) fn grpo_step(&mut self) -> anyhow::Result<serde_json::Value> {
        let step = self.state.step;
        let seed = self.cfg.run.seed;
        let started = Instant::now();
        // Everything random below draws from explicit seeds; libtorch's generator (LoRA dropout)
        // is reset from the step too, so a resumed run repeats an uninterrupted one.
        tch::manual_seed((mask_seed(seed, step as u64, 0x6472_6f70) >> 1) as i64);

        // 1-2. Prompts and rollouts.
        // Every rank draws the same prompts and rolls out its own block of whole groups; seeds
        // come from the global slot, so the samples do not depend on the world size.
        let chosen = self.next_prompts();
        let mine = self.world.share(chosen.len());
        let n = self.cfg.rollout.n;
        let requests: Vec<Request> = chosen
            .iter()
            .zip(request_seeds(seed, step as u64, &chosen, self.tasks.len(), n))
            .skip(mine.start)
            .take(mine.len())
            .map(|(&t, seeds)| Request { prompt: self.prompts[t].clone(), seeds })
            .collect();
        let sampler = &self.cfg.rollout.sampler;
        // 3. Verification overlaps generation: each finished rollout batch goes to a thread that
        // decodes it (text, and token pieces for the store) and runs the sandbox pool (CPU)
        // while the model (GPU) decodes the next batch.
        let ready: Vec<dllm_verifier::PreparedTask> = chosen[mine.clone()].iter().map(|&t| self.prepared[t].clone()).collect();
        let (tx, rx) = mpsc::channel::<Vec<(usize, usize, Vec<i64>)>>();
        let (verifier, tokenizer, special) = (&self.verifier, &self.tokenizer, &self.special);
        let mut rollout_seconds = 0.0;
        let ((rollouts, gen), mut judged) = std::thread::scope(|scope| -> anyhow::Result<_> {
            let judging = scope.spawn(move || {
                let mut judged: HashMap<(usize, usize), Decoded> = HashMap::new();
                for batch in rx {
                    let texts: Vec<String> = batch.iter().map(|(_, _, ids)| tokenizer.decode(ids, true).unwrap_or_default()).collect();
                    let completions: Vec<Completion> =
                        batch.iter().zip(&texts).map(|((request, _, _), text)| Completion { task: *request, text: text.clone() }).collect();
                    let verdicts = verifier.verify_batch(&ready, &completions, &|_| {});
                    for (((request, sample, ids), text), verdict) in batch.into_iter().zip(texts).zip(verdicts) {
                        judged.insert((request, sample), Decoded { text, tokens: ids.len(), pieces: tokenizer.pieces(&ids), verdict });
                    }
                }
                judged
            });
            let generated = generate(&self.model, sampler, &requests, special, Batching::Bucket, self.cfg.rollout.batch_size, &mut |batch, _, _| {
                let _ = tx.send(batch.iter().map(|r| (r.request, r.sample, r.completion(&special.stop).to_vec())).collect());
            });
            drop(tx);
            rollout_seconds = started.elapsed().as_secs_f64();
            let judged = judging.join().map_err(|_| anyhow::anyhow!("the verifier thread panicked"))?;
            Ok((generated.context("rollout")?, judged))
        })?;
        // 4. Rewards.
        let mut samples: Vec<Sample> = Vec::with_capacity(rollouts.len());
        for mut rollout in rollouts {
            let Some(Decoded { text, tokens, pieces, verdict }) = judged.remove(&(rollout.request, rollout.sample)) else {
                anyhow::bail!("rollout {} of prompt {} was not judged", rollout.sample, rollout.request);
            };
            let (reward, components) = reward_of(&self.cfg.reward, &text, tokens, &verdict);
            // From here on, `request` is the prompt's slot in the whole step.
            rollout.request += mine.start;
            samples.push(Sample { task: chosen[rollout.request], rollout, text, tokens, pieces, verdict, reward, components, signals: Vec::new() });
        }
        let rejudged = rejudge_sandbox_failures(&mut samples, &self.cfg.reward, &|items| {
            let ready: Vec<dllm_verifier::PreparedTask> = items.iter().map(|(t, _)| self.prepared[*t].clone()).collect();
            let completions: Vec<Completion> =
                items.iter().enumerate().map(|(slot, (_, text))| Completion { task: slot, text: text.clone() }).collect();
            self.verifier.verify_batch(&ready, &completions, &|_| {})
        });
        let unjudged = samples.iter().filter(|s| s.reward.is_none()).count();
        if unjudged > 0 {
            tracing::warn!("step {step}: {unjudged} of {} completions failed in the sandbox twice; left out of the update", samples.len());
        }
        let (cross_checked, disagreements) = match &self.cross {
            Some((verifier, prepared)) => {
                let main_is_native = matches!(self.cfg.verifier.backend, super::config::BackendName::Native);
                let seed = mask_seed(seed, step as u64, 0x6372_6f73);
                cross_check(verifier, prepared, main_is_native, self.cfg.verifier.cross_check, seed, &mut samples)
            }
            None => (0, 0),
        };
        // Verification beyond the generation it overlapped (+ rewards and cross-checks).
        let verify_seconds = started.elapsed().as_secs_f64() - rollout_seconds;
        // Every rank gets every sample (rank order, then prompt slot and sample), and the rank
        // counters are summed: from here on all ranks compute the same statistics and rows.
        let mut samples = self.gather_samples(samples)?;
        samples.sort_by_key(|s| (s.rollout.request, s.rollout.sample));
        let mut counts = [rejudged as f64, cross_checked as f64, disagreements as f64, gen.forwards as f64];
        self.world.sum_f64(&mut counts)?;
        let [rejudged, cross_checked, disagreements, forwards] = counts.map(|c| c as usize);

        // 5. Group advantages, statistics, substitution.
        let groups: Vec<Vec<usize>> = (0..chosen.len()).map(|g| (0..samples.len()).filter(|&i| samples[i].rollout.request == g).collect()).collect();
        // A sample without a reward (the sandbox failed on it twice) takes no part: its group's
        // statistics are those of the rest, the solve rates and the mean reward leave it out.
        let estimator = self.cfg.algorithm.adv_estimator;
        let advantages: Vec<Vec<f64>> =
            groups.iter().map(|g| judged_group_advantages(&g.iter().map(|&i| samples[i].reward).collect::<Vec<_>>(), estimator)).collect();
        let rewards: Vec<Vec<f64>> = groups.iter().map(|g| g.iter().filter_map(|&i| samples[i].reward).collect()).collect();
        let solved: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| g.iter().filter(|&&i| samples[i].reward.is_some()).map(|&i| samples[i].verdict.all_passed).collect())
            .collect();
        let solves = SolveStats::from_groups(&solved);
        let substitution = if self.cfg.algorithm.dynamic_filtering {
            informative_substitution(&rewards, mask_seed(seed, step as u64, 0x7375_6273))
        } else {
            dllm_rewards::Substitution { source: (0..groups.len()).collect(), replaced: 0, no_informative_group: false }
        };

        if self.world.is_main() {
            self.log_rollouts(step, &chosen, &samples)?;
        }
        if unjudged == samples.len() {
            self.store.flush()?;
            bail!("step {step}: the sandbox failed on every completion, twice; it is not usable (the verdicts are in the run store)");
        }
        let rewarded = samples.len() - unjudged;
        let reward_mean = samples.iter().filter_map(|s| s.reward).sum::<f64>() / rewarded.max(1) as f64;
        let mut metrics = serde_json::json!({
            "reward_mean": reward_mean,
            "solve_all": solves.solve_all, "solve_none": solves.solve_none,
            "solve_partial": solves.solve_partial, "solve_mean": solves.solve_mean,
            "groups_substituted": substitution.replaced,
            "sandbox_rejudged": rejudged, "sandbox_unjudged": unjudged,
            "sandbox_charged": samples.iter().filter(|s| s.verdict.sandbox_failure_charged).count(),
            "response_tokens_mean": samples.iter().map(|s| s.tokens as f64).sum::<f64>() / samples.len().max(1) as f64,
            "rollout_forwards": forwards,
            "generated_tokens_per_second": (samples.len() as f64 * sampler.max_new_tokens as f64) / rollout_seconds.max(1e-9),
        });
        if self.cross.is_some() {
            metrics["cross_checked"] = cross_checked.into();
            metrics["backend_disagreements"] = disagreements.into();
        }
        if substitution.no_informative_group {
            metrics["skipped_update"] = "no informative group: every group has equal rewards".into();
            metrics["seconds"] = serde_json::json!({"rollout": rollout_seconds, "verify": verify_seconds, "total": started.elapsed().as_secs_f64()});
            return Ok(metrics);
        }

        // 6. Training micro-batches: the rows of every slot's source group, packed by prompt
        // length (rows of one micro-batch share it, so nothing is padded), in chunks.
        let device = self.model.placement.device;
        let mut rows = training_rows(&groups, &advantages, &substitution.source, &|i| samples[i].reward.is_some());
        let prompt_of = |i: usize| &self.prompts[chosen[samples[i].rollout.request]];
        rows.sort_by_key(|&(i, _)| prompt_of(i).len());
        let mut batches = Vec::new();
        for same_length in rows.chunk_by(|a, b| prompt_of(a.0).len() == prompt_of(b.0).len()) {
            for chunk in same_length.chunks(self.cfg.actor.ppo_micro_batch_size) {
                let prompt_len = prompt_of(chunk[0].0).len();
                let ids: Vec<i64> = chunk.iter().flat_map(|&(i, _)| prompt_of(i).iter().chain(&samples[i].rollout.response).copied()).collect();
                let adv: Vec<f32> = chunk.iter().map(|&(_, a)| a).collect();
                batches.push(MicroBatch {
                    sequences: Tensor::from_slice(&ids).view([chunk.len() as i64, (prompt_len + sampler.max_new_tokens as usize) as i64]).to_device(device),
                    prompt_len: prompt_len as i64,
                    advantages: Tensor::from_slice(&adv).to_device(device),
                });
            }
        }

        // 7-9. Coupled masks and old log-probs for every epoch, then the PPO epochs.
        let update_start = Instant::now();
        let actor = &self.cfg.actor;
        let clip = ClipRange { low: actor.clip_ratio_low, high: actor.clip_ratio_high };
        let pad = actor.no_loss_on_pad.then_some(self.special.pad);
        let options = BackwardOptions { recompute: actor.gradient_checkpointing, head_chunk: None };
        // Old, new and reference log-probs at the rollout's temperature (verl divides the logits
        // by it for all three), so the ratio compares the distribution that sampled. A greedy
        // rollout (T = 0) has no distribution to match: plain logits.
        let temperature = if sampler.temperature > 0.0 { sampler.temperature } else { 1.0 };
        let (mut loss_sum, mut clipped, mut scored, mut kl_sum, mut grad_norm) = (0.0, 0i64, 0i64, 0.0, 0.0);
        let mut old_seconds = 0.0;
        // Every epoch's masks and old log-probs first, all under the rollout's weights (as
        // Dream-Coder computes them right after the rollout): the PPO ratio of a later epoch is
        // then against the policy that sampled, and clipping can act.
        let old_start = Instant::now();
        let mut epochs_passes: Vec<Vec<ScoredPass>> = Vec::with_capacity(actor.ppo_epochs);
        // Each rank scores and trains its block of the step's micro-batches; masks are drawn
        // from the global micro-batch index, so they are those of a single process.
        let my_batches = self.world.share(batches.len());
        for epoch in 0..actor.ppo_epochs {
            let epoch_seed = mask_seed(seed, step as u64, 1000 + epoch as u64);
            let mut passes = Vec::new();
            for (b, mb) in batches.iter().enumerate().filter(|(b, _)| my_batches.contains(b)) {
                let (rows, len) = (mb.sequences.size()[0], mb.sequences.size()[1]);
                let response = Tensor::ones([rows, sampler.max_new_tokens], (Kind::Bool, device));
                let seeds = match actor.mask_sharing {
                    MaskSharing::Batch => MaskSeeds::Shared(epoch_seed),
                    MaskSharing::MicroBatch => MaskSeeds::Shared(mask_seed(epoch_seed, b as u64, u64::MAX)),
                    MaskSharing::PerSample => MaskSeeds::PerSample((0..rows as u64).map(|r| mask_seed(epoch_seed, b as u64, r)).collect()),
                };
                let masks = coupled_masks(&response, &seeds)?;
                let prompt_cols = Tensor::zeros([rows, mb.prompt_len], (Kind::Bool, device));
                let full_response = Tensor::cat(&[&prompt_cols, &response], 1);
                for (k, (mask, t)) in masks.passes().into_iter().enumerate() {
                    let mask = Tensor::cat(&[&prompt_cols, mask], 1);
                    let batch = ScoredBatch::new(&self.model, &mb.sequences, &mask, None)?.with_temperature(temperature)?;
                    let weights = token_weights(&mask, &full_response, &t, actor.weighting(), &mb.sequences, pad);
                    let old = old_logprobs(&self.model, &batch)?;
                    let reference = if actor.use_kl_loss {
                        Some(match &self.reference {
                            Some(frozen) => tch::no_grad(|| frozen.score(&batch, Pass::EVAL))?,
                            None => tch::no_grad(|| self.model.score(&batch, Pass::BASE))?,
                        })
                    } else {
                        None
                    };
                    let advantages = batch.flatten(&mb.advantages.unsqueeze(1).expand([rows, len], false));
                    let (loss_weights, norm_weights) = (batch.flatten(&weights.loss), batch.flatten(&weights.norm));
                    passes.push(ScoredPass { slot: 2 * b + k, batch, loss_weights, norm_weights, old, reference, advantages });
                }
            }
            epochs_passes.push(passes);
        }
        old_seconds += old_start.elapsed().as_secs_f64();
        let mut non_finite = 0;
        // Reducing the gradients, clipping and stepping (the part ZeRO-2 changes).
        let mut optimizer_seconds = 0.0;
        let mut kl_penalty_sum = 0.0;
        let mut entropy_sum = 0.0;
        for passes in &epochs_passes {
            // The token-mean's Σ w for each pass (`actor.token_mean`): that of the whole epoch's
            // passes, or of the pass's micro-batch (both coupled passes) times the number of
            // micro-batches, as verl's gradient accumulation divides.
            // Summed over the passes of every rank: the normaliser is the whole step's.
            let mut sums = vec![0.0; 2 * batches.len()];
            for p in passes {
                sums[p.slot] = p.norm_weights.sum(Kind::Double).double_value(&[]);
            }
            self.world.sum_f64(&mut sums)?;
            let total: f64 = sums.iter().sum();
            if total <= 0.0 {
                // Every token weighs nothing (CART with a noise level near 1: no visible context).
                continue;
            }
            let micro_batches: Vec<usize> = (0..2 * batches.len()).map(|slot| slot / 2).collect();
            let all_normalisers = token_mean_normalisers(&micro_batches, &sums, actor.token_mean);
            let normalisers: Vec<f64> = passes.iter().map(|p| all_normalisers[p.slot]).collect();
            self.optimizer.zero_grad();
            let mut epoch_loss = 0.0;
            let before = (clipped, scored, kl_sum, kl_penalty_sum, entropy_sum);
            for (pass, &normaliser) in passes.iter().zip(&normalisers) {
                let clipped_here = Cell::new(0i64);
                let penalty_here = Cell::new(0.0f64);
                let entropy_here = Cell::new(0.0f64);
                let objective = |lp: &Tensor, entropy: Option<&Tensor>, start: i64| {
                    let n = lp.size()[0];
                    let terms = ppo_terms(lp, &pass.old.narrow(0, start, n), &pass.advantages.narrow(0, start, n), clip);
                    let w = pass.loss_weights.narrow(0, start, n);
                    clipped_here.set(clipped_here.get() + terms.clipped.logical_and(&w.gt(0.0)).sum(Kind::Int64).int64_value(&[]));
                    let mut loss = weighted_loss(&terms, &w, normaliser);
                    // The penalty and the bonus are token-mean'd like the policy loss, with the same weights.
                    if let Some(reference) = &pass.reference {
                        let kl = k3(lp, &reference.narrow(0, start, n));
                        let live = kl.where_self(&w.ne(0.0), &kl.zeros_like());
                        penalty_here.set(penalty_here.get() + live.masked_select(&w.gt(0.0)).sum(Kind::Double).double_value(&[]));
                        loss += (live * &w).sum(Kind::Float) * (actor.kl_loss_coef / normaliser.max(1e-6));
                    }
                    if let Some(entropy) = entropy {
                        let live = entropy.where_self(&w.ne(0.0), &entropy.zeros_like());
                        entropy_here.set(entropy_here.get() + live.masked_select(&w.gt(0.0)).sum(Kind::Double).double_value(&[]));
                        loss -= (live * &w).sum(Kind::Float) * (actor.entropy_coeff / normaliser.max(1e-6));
                    }
                    loss
                };
                let (new, loss) = if actor.entropy_coeff > 0.0 {
                    self.model.backward_scored_with_entropy(&pass.batch, Pass::TRAIN, options, &|lp, e, start| objective(lp, Some(e), start))?
                } else {
                    self.model.backward_scored(&pass.batch, Pass::TRAIN, options, &|lp, start| objective(lp, None, start))?
                };
                entropy_sum += entropy_here.get();
                epoch_loss += loss;
                clipped += clipped_here.get();
                kl_penalty_sum += penalty_here.get();
                let live = pass.loss_weights.gt(0.0);
                scored += live.sum(Kind::Int64).int64_value(&[]);
                // k1 estimate of KL(old || new) over weighted tokens.
                kl_sum += (&pass.old - &new).masked_select(&live).sum(Kind::Double).double_value(&[]);
            }
            // Gradients (all-reduced, or reduce-scattered into each rank's shard under ZeRO-2)
            // and this epoch's statistics summed over ranks: every rank then clips and steps the
            // same way.
            let optimizer_start = std::time::Instant::now();
            grad_norm = self.optimizer.reduce_and_clip(&self.world, actor.grad_clip)?;
            optimizer_seconds += optimizer_start.elapsed().as_secs_f64();
            if self.world.size > 1 {
                let mut epoch = [epoch_loss, (clipped - before.0) as f64, (scored - before.1) as f64, kl_sum - before.2, kl_penalty_sum - before.3, entropy_sum - before.4];
                self.world.sum_f64(&mut epoch)?;
                epoch_loss = epoch[0];
                clipped = before.0 + epoch[1] as i64;
                scored = before.1 + epoch[2] as i64;
                kl_sum = before.2 + epoch[3];
                kl_penalty_sum = before.3 + epoch[4];
                entropy_sum = before.4 + epoch[5];
            }
            // A non-finite loss or gradient would poison every weight: skip that update.
            if !epoch_loss.is_finite() || !grad_norm.is_finite() {
                non_finite += 1;
                self.optimizer.zero_grad();
                tracing::warn!("step {step}: non-finite loss {epoch_loss} or gradient norm {grad_norm}; update skipped");
                continue;
            }
            loss_sum += epoch_loss;
            // Per RL step, not per optimizer step: verl steps its scheduler once per update.
            let lr = self.cfg.optim.lr_schedule.lr(self.cfg.optim.lr, step);
            self.optimizer.set_lr(lr);
            let optimizer_start = std::time::Instant::now();
            self.optimizer.step(&self.world)?;
            optimizer_seconds += optimizer_start.elapsed().as_secs_f64();
            metrics["lr"] = lr.into();
        }
        if actor.use_kl_loss {
            // Mean k3 to the reference over the weighted tokens of every epoch.
            metrics["kl_loss"] = (kl_penalty_sum / scored.max(1) as f64).into();
        }
        if actor.entropy_coeff > 0.0 {
            metrics["entropy"] = (entropy_sum / scored.max(1) as f64).into();
        }
        metrics["non_finite_updates_skipped"] = non_finite.into();
        let update_seconds = update_start.elapsed().as_secs_f64() - old_seconds;
        let epochs = actor.ppo_epochs as f64;
        metrics["loss"] = (loss_sum / epochs).into();
        metrics["clip_fraction"] = (clipped as f64 / scored.max(1) as f64).into();
        metrics["approx_kl"] = (kl_sum / scored.max(1) as f64).into();
        metrics["grad_norm"] = grad_norm.into();
        metrics["seconds"] = serde_json::json!({
            "rollout": rollout_seconds, "verify": verify_seconds, "old_logprob": old_seconds,
            "update": update_seconds, "optimizer": optimizer_seconds, "total": started.elapsed().as_secs_f64(),
        });
        Ok(metrics)
    }

    /// Every rank's samples, in rank order (this rank's own when alone).
    fn gather_samples(&self, samples: Vec<Sample>) -> anyhow::Result<Vec<Sample>> {
        if self.world.size == 1 {
            return Ok(samples);
        }
        let bytes = serde_json::to_vec(&samples)?;
        let mut all = Vec::new();
        for (rank, theirs) in self.world.all_gather_bytes(&bytes)?.into_iter().enumerate() {
            let theirs: Vec<Sample> = serde_json::from_slice(&theirs).with_context(|| format!("reading the samples of rank {rank}"))?;
            all.extend(theirs);
        }
        Ok(all)
    }

    fn log_rollouts(&self, step: i64, chosen: &[usize], samples: &[Sample]) -> anyhow::Result<()> {
        let prompts = chosen
            .iter()
            .map(|&t| PromptRecord {
                prompt_id: self.tasks[t].id.clone(),
                source: self.tasks[t].source.clone().unwrap_or_default(),
                kind: self.tasks[t].kind().into(),
                text: self.tokenizer.decode(&self.prompts[t], false).unwrap_or_default(),
            })
            .collect();
        self.store.log_prompts(prompts)?;
        let records = samples
            .iter()
            .map(|s| {
                let stdio = matches!(self.tasks[s.task].spec, TestSpec::Stdio { .. });
                let code = dllm_verifier::extract_code(&s.text).map(|e| e.code).unwrap_or_default();
                RolloutRecord {
                    step,
                    prompt_id: self.tasks[s.task].id.clone(),
                    sample: s.rollout.sample as i64,
                    seed: s.rollout.seed,
                    completion: s.text.clone(),
                    tokens: s.tokens as i64,
                    step_map: s.rollout.step_map.clone(),
                    pieces: s.pieces.clone(),
                    // No reward (NULL) for a completion the sandbox could not judge, and that as
                    // its verdict, whatever test it failed first.
                    reward: s.reward,
                    reward_components: s.components.clone(),
                    verdict: if s.reward.is_none() { "sandbox_error".into() } else { s.verdict.summary().into() },
                    hack_signals: serde_json::to_value(
                        code_signals(&code, stdio)
                            .into_iter()
                            .chain(test_data_in_code(&code, &self.tasks[s.task].spec))
                            .chain(s.signals.iter().cloned())
                            .collect::<Vec<_>>(),
                    )
                    .unwrap_or_default(),
                    tests: TestRecord::from_verdict(&s.verdict),
                }
            })
            .collect();
        self.store.log_rollouts(records)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dllm_rewards::AdvantageEstimator;
    use dllm_verifier::{Backend, Task, Verifier};

    fn sample(task: usize, text: &str, verdict: TaskVerdict) -> Sample {
        let rollout = Rollout { request: 0, sample: 0, seed: 0, response: vec![], step_map: vec![] };
        Sample { task, rollout, text: text.into(), tokens: 0, pieces: Vec::new(), verdict, reward: Some(1.0), components: None, signals: Vec::new() }
    }

    fn verdict(outcome: dllm_verifier::TestVerdict) -> TaskVerdict {
        let test = dllm_verifier::TestResult { verdict: outcome, seconds: 0.1, stdout: String::new(), stderr: String::new() };
        TaskVerdict::from_tests("t", Some(dllm_verifier::CodeSource::Fenced), vec![test], 0.1)
    }

    #[test]
    fn the_token_mean_runs_over_the_mini_batch_or_each_micro_batch() {
        // Two micro-batches, two coupled passes each; Σ w of 3 + 1 and 10 + 6.
        let (micro_batches, sums) = ([0, 0, 1, 1], [3.0, 1.0, 10.0, 6.0]);
        assert_eq!(token_mean_normalisers(&micro_batches, &sums, TokenMean::MiniBatch), [20.0; 4]);
        // verl: each micro-batch's token-mean, divided by the 2 accumulated micro-batches.
        assert_eq!(token_mean_normalisers(&micro_batches, &sums, TokenMean::MicroBatch), [8.0, 8.0, 32.0, 32.0]);
        // With one micro-batch the two agree.
        assert_eq!(token_mean_normalisers(&[0, 0], &[3.0, 1.0], TokenMean::MicroBatch), [4.0, 4.0]);
    }

    #[test]
    fn a_sandbox_failure_is_judged_again_then_left_out_of_its_group_and_the_loss() {
        use dllm_verifier::TestVerdict::{Passed, SandboxError, WrongAnswer};
        let broken = || verdict(SandboxError { message: "fork failed".into() });
        let cfg = RewardConfig::default();
        let outcomes = [verdict(Passed), broken(), broken(), verdict(WrongAnswer), verdict(Passed)];
        let mut samples: Vec<Sample> = outcomes
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let mut s = sample(0, &format!("answer {i}"), v);
                (s.reward, s.components) = reward_of(&cfg, &s.text, s.tokens, &s.verdict);
                s
            })
            .collect();
        assert_eq!(samples.iter().map(|s| s.reward).collect::<Vec<_>>(), [Some(1.0), None, None, Some(0.0), Some(1.0)]);
        // The retry judges only the two spoiled ones: the first now passes, the second fails again.
        let asked = std::cell::RefCell::new(Vec::new());
        let judge = |items: &[(usize, String)]| {
            asked.borrow_mut().extend(items.iter().map(|(_, text)| text.clone()));
            vec![verdict(Passed), broken()]
        };
        assert_eq!(rejudge_sandbox_failures(&mut samples, &cfg, &judge), 2);
        assert_eq!(*asked.borrow(), ["answer 1", "answer 2"]);
        assert_eq!(samples.iter().map(|s| s.reward).collect::<Vec<_>>(), [Some(1.0), Some(1.0), None, Some(0.0), Some(1.0)]);
        // The group's statistics are those of the four judged samples; the fifth has no row.
        let groups = vec![(0..5).collect::<Vec<_>>()];
        let rewards: Vec<Option<f64>> = samples.iter().map(|s| s.reward).collect();
        let advantages = vec![judged_group_advantages(&rewards, AdvantageEstimator::Grpo)];
        let rows = training_rows(&groups, &advantages, &[0], &|i| samples[i].reward.is_some());
        let expected = dllm_rewards::group_advantages(&[1.0, 1.0, 0.0, 1.0], AdvantageEstimator::Grpo);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 3, 4]);
        for (row, want) in rows.iter().zip(expected) {
            assert!((row.1 as f64 - want).abs() < 1e-6, "{rows:?}");
        }
        assert_eq!(advantages[0][2], 0.0);
    }

    #[test]
    fn a_task_drawn_twice_in_a_step_decodes_differently() {
        let seeds = request_seeds(7, 3, &[2, 0, 2], 3, 4);
        assert_ne!(seeds[0], seeds[2], "the copies of task 2 share no seed");
        assert!(seeds[0].iter().all(|s| !seeds[2].contains(s)));
        // A first occurrence keeps the seeds it always had.
        assert_eq!(seeds[0], (0..4).map(|s| rollout_seed(7, 3, 2, s)).collect::<Vec<_>>());
        assert_eq!(seeds[1], (0..4).map(|s| rollout_seed(7, 3, 0, s)).collect::<Vec<_>>());
    }

    #[test]
    fn old_logprobs_take_no_dropout() {
        use dllm_policy::{Init, LoraConfig, ModelConfig, Placement};
        let json = serde_json::json!({
            "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
            "mask_token_id": 39, "initializer_range": 0.2
        });
        let serde_json::Value::Object(map) = json else { unreachable!() };
        let config = ModelConfig::from_map(map, std::path::Path::new("tiny.json")).unwrap();
        let mut model = DreamModel::new(config, Placement::cpu(), Init::Random { seed: 4 }).unwrap();
        model.attach_lora(LoraConfig { r: 2, lora_alpha: 4.0, lora_dropout: 0.5, ..LoraConfig::default() }, 5).unwrap();
        tch::no_grad(|| {
            for v in model.lora.as_ref().unwrap().vs.trainable_variables() {
                let _ = v.detach().normal_(0.0, 0.3);
            }
        });
        let ids = Tensor::from_slice(&[3i64, 9, 14, 1, 22, 7, 30, 5, 11, 2, 17, 26, 8, 4, 19, 33]).view([2, 8]);
        let mask = Tensor::arange(8, (Kind::Int64, tch::Device::Cpu)).ge(3).unsqueeze(0).repeat([2, 1]);
        let batch = ScoredBatch::new(&model, &ids, &mask, None).unwrap();
        // libtorch's generator is process-wide: draw on it between the calls instead of relying
        // on seeds another test could move.
        let first = old_logprobs(&model, &batch).unwrap();
        let train_a = tch::no_grad(|| model.score(&batch, Pass::TRAIN)).unwrap();
        let train_b = tch::no_grad(|| model.score(&batch, Pass::TRAIN)).unwrap();
        assert!(!train_a.equal(&train_b), "dropout is on in the training pass");
        let again = old_logprobs(&model, &batch).unwrap();
        assert!(first.equal(&again), "old log-probs do not depend on libtorch's generator");
        assert!(first.equal(&tch::no_grad(|| model.score(&batch, Pass::EVAL)).unwrap()));
    }

    #[test]
    fn a_verdict_the_other_sandbox_does_not_share_is_flagged() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": "t", "kind": "call", "entry_point": "f", "tests": [{"args": [1], "expected": 2}, {"args": [5], "expected": 6}],
        }))
        .unwrap();
        let verifier = Verifier::new(Backend::Native, 2).unwrap();
        let prepared: Vec<_> = verifier.prepare_all(vec![task]).into_iter().map(|p| p.unwrap()).collect();
        let judge = |text: &str| verifier.verify_batch(&prepared, &[Completion { task: 0, text: text.into() }], &|_| {}).remove(0);
        let right = "```python\ndef f(x):\n    return x + 1\n```";
        let wrong = "```python\ndef f(x):\n    return 2\n```";
        let honest = judge(right);
        assert!(honest.all_passed);
        // A main verdict that claims a pass the second sandbox does not confirm (as a sandbox
        // escape would make it), next to an honest pass and a failure (never re-judged).
        let mut forged = judge(wrong);
        assert!(!forged.all_passed);
        let failure = forged.clone();
        forged.all_passed = true;
        let mut samples = vec![sample(0, right, honest), sample(0, wrong, forged), sample(0, wrong, failure)];
        let (checked, disagreements) = cross_check(&verifier, &prepared, true, 1.0, 7, &mut samples);
        assert_eq!((checked, disagreements), (2, 1));
        assert!(samples[0].signals.is_empty() && samples[2].signals.is_empty());
        assert_eq!(samples[1].signals[0].name, "backend_disagreement");
        // A fraction of 0 judges nothing again.
        assert_eq!(cross_check(&verifier, &prepared, true, 0.0, 7, &mut samples), (0, 0));
    }
}

