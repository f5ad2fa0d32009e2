//! One coupled-GRPO step, stage by stage, as Dream-Coder's recipe runs it
//! (`../shared/research/dllm_rl.md` §3.1): sample prompts → roll out G samples each → verify →
//! rewards → group advantages → informative substitution → coupled masks → old log-probs →
//! PPO epochs (each: both masks of every row, micro-batches accumulated, one optimizer step).

use std::cell::Cell;
use std::time::Instant;

use anyhow::Context;
use dllm_policy::estimator::token_weights;
use dllm_policy::grpo::{ppo_terms, weighted_loss, ClipRange};
use dllm_policy::{coupled_masks, mask_seed, BackwardOptions, MaskSeeds, Pass, ScoredBatch};
use dllm_rewards::{code_signals, group_advantages, informative_substitution, Judged, SolveStats};
use dllm_rollout::{generate, rollout_seed, Batching, Request, Rollout};
use dllm_verifier::{Completion, TaskVerdict, TestSpec};
use tch::{Kind, Tensor};

use super::config::MaskSharing;
use super::Trainer;
use crate::store::{PromptRecord, RolloutRecord, TestRecord};

/// One sample of the step, judged.
struct Sample {
    task: usize,
    rollout: Rollout,
    text: String,
    tokens: usize,
    verdict: TaskVerdict,
    reward: f64,
    components: Option<serde_json::Value>,
}

/// The rows one PPO micro-batch trains on: G samples of one prompt (equal lengths: no padding).
struct MicroBatch {
    /// (B, P + N) int64.
    sequences: Tensor,
    prompt_len: i64,
    /// (B,) fp32.
    advantages: Tensor,
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
        let chosen = self.next_prompts();
        let n = self.cfg.rollout.n;
        let requests: Vec<Request> = chosen
            .iter()
            .map(|&t| Request {
                prompt: self.prompts[t].clone(),
                seeds: (0..n as u64).map(|s| rollout_seed(seed, step as u64, t as u64, s)).collect(),
            })
            .collect();
        let sampler = &self.cfg.rollout.sampler;
        let (rollouts, gen) = generate(&self.model, sampler, &requests, &self.special, Batching::Bucket, self.cfg.rollout.batch_size, &mut |_, _, _| {})
            .context("rollout")?;
        let rollout_seconds = started.elapsed().as_secs_f64();

        // 3-4. Verify and reward.
        let verify_start = Instant::now();
        let texts: Vec<(String, usize)> = rollouts
            .iter()
            .map(|r| {
                let completion = r.completion(&self.special.stop);
                (self.tokenizer.decode(completion, true).unwrap_or_default(), completion.len())
            })
            .collect();
        let ready: Vec<dllm_verifier::PreparedTask> = chosen.iter().map(|&t| self.prepared[t].clone()).collect();
        let completions: Vec<Completion> = rollouts.iter().zip(&texts).map(|(r, (text, _))| Completion { task: r.request, text: text.clone() }).collect();
        let verdicts = self.verifier.verify_batch(&ready, &completions, &|_| {});
        let mut samples: Vec<Sample> = Vec::with_capacity(rollouts.len());
        for ((rollout, (text, tokens)), verdict) in rollouts.into_iter().zip(texts).zip(verdicts) {
            let judged = Judged { completion: &text, tokens, verdict: &verdict };
            let (reward, components) = match self.cfg.reward.reward(&judged) {
                Ok(r) => (r.total, serde_json::to_value(&r.components).ok()),
                // A sandbox failure says nothing about the completion: zero, and logged as such.
                Err(_) => (0.0, None),
            };
            samples.push(Sample { task: chosen[rollout.request], rollout, text, tokens, verdict, reward, components });
        }
        let verify_seconds = verify_start.elapsed().as_secs_f64();

        // 5. Group advantages, statistics, substitution.
        let groups: Vec<Vec<usize>> = (0..chosen.len()).map(|g| (0..samples.len()).filter(|&i| samples[i].rollout.request == g).collect()).collect();
        let rewards: Vec<Vec<f64>> = groups.iter().map(|g| g.iter().map(|&i| samples[i].reward).collect()).collect();
        let advantages: Vec<Vec<f64>> = rewards.iter().map(|r| group_advantages(r, self.cfg.algorithm.adv_estimator)).collect();
        let solves = SolveStats::from_groups(&groups.iter().map(|g| g.iter().map(|&i| samples[i].verdict.all_passed).collect()).collect::<Vec<_>>());
        let substitution = if self.cfg.algorithm.dynamic_filtering {
            informative_substitution(&rewards, mask_seed(seed, step as u64, 0x7375_6273))
        } else {
            dllm_rewards::Substitution { source: (0..groups.len()).collect(), replaced: 0, no_informative_group: false }
        };

        self.log_rollouts(step, &chosen, &samples)?;
        let reward_mean = samples.iter().map(|s| s.reward).sum::<f64>() / samples.len().max(1) as f64;
        let mut metrics = serde_json::json!({
            "reward_mean": reward_mean,
            "solve_all": solves.solve_all, "solve_none": solves.solve_none,
            "solve_partial": solves.solve_partial, "solve_mean": solves.solve_mean,
            "groups_substituted": substitution.replaced,
            "response_tokens_mean": samples.iter().map(|s| s.tokens as f64).sum::<f64>() / samples.len().max(1) as f64,
            "rollout_forwards": gen.forwards,
            "generated_tokens_per_second": (samples.len() as f64 * sampler.max_new_tokens as f64) / rollout_seconds.max(1e-9),
        });
        if substitution.no_informative_group {
            metrics["skipped_update"] = "no informative group: every group has equal rewards".into();
            metrics["seconds"] = serde_json::json!({"rollout": rollout_seconds, "verify": verify_seconds, "total": started.elapsed().as_secs_f64()});
            return Ok(metrics);
        }

        // 6. Training micro-batches: each slot's source group, its rows in chunks.
        let device = self.model.placement.device;
        let mut batches = Vec::new();
        for &g in &substitution.source {
            for chunk in groups[g].chunks(self.cfg.actor.ppo_micro_batch_size) {
                let prompt = &self.prompts[chosen[g]];
                let rows: Vec<i64> = chunk.iter().flat_map(|&i| prompt.iter().chain(&samples[i].rollout.response).copied()).collect();
                let len = (prompt.len() + sampler.max_new_tokens as usize) as i64;
                let adv: Vec<f32> = chunk.iter().map(|&i| advantages[g][groups[g].iter().position(|&j| j == i).unwrap_or(0)] as f32).collect();
                batches.push(MicroBatch {
                    sequences: Tensor::from_slice(&rows).view([chunk.len() as i64, len]).to_device(device),
                    prompt_len: prompt.len() as i64,
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
        let (mut loss_sum, mut clipped, mut scored, mut kl_sum, mut grad_norm) = (0.0, 0i64, 0i64, 0.0, 0.0);
        let mut old_seconds = 0.0;
        // Every epoch's masks and old log-probs first, all under the rollout's weights (as
        // Dream-Coder computes them right after the rollout): the PPO ratio of a later epoch is
        // then against the policy that sampled, and clipping can act.
        let old_start = Instant::now();
        let mut epochs_passes = Vec::with_capacity(actor.ppo_epochs);
        for epoch in 0..actor.ppo_epochs {
            let epoch_seed = mask_seed(seed, step as u64, 1000 + epoch as u64);
            let mut passes = Vec::new();
            for (b, mb) in batches.iter().enumerate() {
                let (rows, len) = (mb.sequences.size()[0], mb.sequences.size()[1]);
                let response = Tensor::ones([rows, sampler.max_new_tokens], (Kind::Bool, device));
                let seeds = match actor.mask_sharing {
                    MaskSharing::Batch => MaskSeeds::Shared(epoch_seed),
                    MaskSharing::PerSample => MaskSeeds::PerSample((0..rows as u64).map(|r| mask_seed(epoch_seed, b as u64, r)).collect()),
                };
                let masks = coupled_masks(&response, &seeds)?;
                let prompt_cols = Tensor::zeros([rows, mb.prompt_len], (Kind::Bool, device));
                let full_response = Tensor::cat(&[&prompt_cols, &response], 1);
                for (mask, t) in masks.passes() {
                    let mask = Tensor::cat(&[&prompt_cols, mask], 1);
                    let batch = ScoredBatch::new(&self.model, &mb.sequences, &mask, None)?;
                    let weights = token_weights(&mask, &full_response, &t, actor.weighting(), &mb.sequences, pad);
                    let old = tch::no_grad(|| self.model.score(&batch, Pass::TRAIN))?;
                    let adv = batch.flatten(&mb.advantages.unsqueeze(1).expand([rows, len], false));
                    let w = (batch.flatten(&weights.loss), batch.flatten(&weights.norm));
                    passes.push((batch, w, old, adv));
                }
            }
            epochs_passes.push(passes);
        }
        old_seconds += old_start.elapsed().as_secs_f64();
        let mut non_finite = 0;
        for passes in &epochs_passes {
            let normaliser: f64 = passes.iter().map(|p| p.1 .1.sum(Kind::Double).double_value(&[])).sum();
            if normaliser <= 0.0 {
                // Every token weighs nothing (CART with a noise level near 1: no visible context).
                continue;
            }
            self.optimizer.zero_grad();
            let mut epoch_loss = 0.0;
            for (batch, (w_loss, _), old, adv) in passes {
                let clipped_here = Cell::new(0i64);
                let objective = |lp: &Tensor, start: i64| {
                    let n = lp.size()[0];
                    let terms = ppo_terms(lp, &old.narrow(0, start, n), &adv.narrow(0, start, n), clip);
                    let w = w_loss.narrow(0, start, n);
                    clipped_here.set(clipped_here.get() + terms.clipped.logical_and(&w.gt(0.0)).sum(Kind::Int64).int64_value(&[]));
                    weighted_loss(&terms, &w, normaliser)
                };
                let (new, loss) = self.model.backward_scored(batch, Pass::TRAIN, options, &objective)?;
                epoch_loss += loss;
                clipped += clipped_here.get();
                let live = w_loss.gt(0.0);
                scored += live.sum(Kind::Int64).int64_value(&[]);
                // k1 estimate of KL(old || new) over weighted tokens.
                kl_sum += (old - &new).masked_select(&live).sum(Kind::Double).double_value(&[]);
            }
            grad_norm = self.optimizer.clip_grad_norm(actor.grad_clip);
            // A non-finite loss or gradient would poison every weight: skip that update.
            if !epoch_loss.is_finite() || !grad_norm.is_finite() {
                non_finite += 1;
                self.optimizer.zero_grad();
                tracing::warn!("step {step}: non-finite loss {epoch_loss} or gradient norm {grad_norm}; update skipped");
                continue;
            }
            loss_sum += epoch_loss;
            let lr = self.cfg.optim.lr_schedule.lr(self.cfg.optim.lr, self.optimizer.step);
            self.optimizer.set_lr(lr);
            self.optimizer.step();
            metrics["lr"] = lr.into();
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
            "update": update_seconds, "total": started.elapsed().as_secs_f64(),
        });
        Ok(metrics)
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
                    pieces: self.tokenizer.pieces(s.rollout.completion(&self.special.stop)),
                    reward: Some(s.reward),
                    reward_components: s.components.clone(),
                    verdict: s.verdict.summary().into(),
                    hack_signals: serde_json::to_value(code_signals(&code, stdio)).unwrap_or_default(),
                    tests: TestRecord::from_verdict(&s.verdict),
                }
            })
            .collect();
        self.store.log_rollouts(records)?;
        Ok(())
    }
}
