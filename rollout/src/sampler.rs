//! The diffusion sampler: Dream's `diffusion_generate` and Fast-dLLM's block decoding with
//! prefix / dual caches and threshold decoding, in one loop that works with any batch.
//!
//! The canvas is `[prompt, MASK x N]` (prompts left-padded to a common length P, with a padding
//! mask, when they differ). The N positions are split into blocks decoded left to right (one
//! block of N for the plain sampler). In each block:
//! - step 0 is a full forward; with a cache, it also fills the cache (the *refresh*), and later
//!   steps recompute only the block (dual) or the block and everything after it (prefix),
//!   starting one position early because of the logit shift;
//! - a step proposes tokens at the block's masked positions ([`crate::proposal`]) and commits
//!   some: each row its own quota `floor(m (1 - s/t))` of the most confident (or the batch-mean
//!   quota of the reference), all left at the block's last step; `origin` reveals each position
//!   with probability `1 - s/t`; threshold decoding commits the position whose token is most
//!   probable and every position whose token probability reaches the threshold (both after the
//!   pad penalty), until the block is full.
//!
//! Where this departs from the published code, deliberately:
//! - Fast-dLLM's Dream block sampler commits the first token of each block from the refresh pass
//!   whatever its confidence and always orders by entropy; here the refresh is the block's first
//!   step under the usual schedule and `alg` is honoured. With one block, no cache, this *is*
//!   the plain sampler (a test checks it).
//! - The reference's batch-mean quota can write proposals over already committed positions of a
//!   row with fewer masks; here a row never commits more than its masks.
//! - Rows that finish early (a stop token with nothing masked before it) are filled with pad and
//!   left alone while the others continue ([`SamplerConfig::early_stop`]).
//!
//! Every random choice uses the row's own uniforms ([`crate::noise`]) at the row's own step
//! count (the steps in which it had something to decode), so a row's result depends on its seed,
//! not on its batch; its step map counts the same steps.

use tch::{Device, Kind, Tensor};

use dllm_policy::{DreamModel, KvCache, ModelConfig, Pass};

use crate::config::{Alg, CacheMode, Quota, SamplerConfig};
use crate::error::{Result, RolloutError};
use crate::noise::step_uniforms;
use crate::proposal::Proposer;
use crate::schedule::{timesteps, transfer_ratio};

/// The token ids the sampler writes and stops at.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialIds {
    pub mask: i64,
    /// What fills the canvas after a finished answer (and left-pads prompts).
    pub pad: i64,
    /// Ids that end a completion (eos, pad, `<|im_end|>`).
    pub stop: Vec<i64>,
}

impl SpecialIds {
    /// From the checkpoint's config, plus `extra_stops` (e.g. the tokenizer's `<|im_end|>`).
    pub fn from_config(config: &ModelConfig, extra_stops: &[i64]) -> Result<Self> {
        let mask = config.mask_token_id()?;
        let pad = config.tokens.pad.or(config.tokens.eos.first().copied()).ok_or_else(|| {
            RolloutError::Request("the checkpoint names neither pad_token_id nor eos_token_id".into())
        })?;
        let mut stop: Vec<i64> = config.tokens.eos.iter().copied().chain([pad]).chain(extra_stops.iter().copied()).collect();
        stop.sort_unstable();
        stop.dedup();
        Ok(SpecialIds { mask, pad, stop })
    }
}

/// A batch to decode: (B, P + N) ids whose last N are masks.
#[derive(Debug)]
pub struct Canvas {
    pub ids: Tensor,
    /// P: where the response starts (prompts are left-padded to it).
    pub prompt_len: i64,
    /// (B, P + N) 0/1, only when some prompt is padded.
    pub attention: Option<Tensor>,
}

/// What a batch decoded into.
#[derive(Debug)]
pub struct Decoded {
    /// (B, P + N): prompts and responses.
    pub ids: Tensor,
    /// (B, N) int64: the step at which each response token was committed; -1 for positions
    /// filled with pad after the row had finished.
    pub step_map: Tensor,
    /// Model forwards run (full and cached).
    pub forwards: i64,
    /// Of which full forwards over the whole canvas.
    pub full_forwards: i64,
}

/// Decodes `canvas` with `model`; `seeds` holds one seed per row.
pub fn sample(model: &DreamModel, cfg: &SamplerConfig, canvas: &Canvas, seeds: &[u64], special: &SpecialIds) -> Result<Decoded> {
    cfg.validate()?;
    let _guard = tch::no_grad_guard();
    let (b, l) = (canvas.ids.size()[0], canvas.ids.size()[1]);
    let (p, n) = (canvas.prompt_len, cfg.max_new_tokens);
    if p < 1 || p + n != l || seeds.len() as i64 != b {
        return Err(RolloutError::Request(format!(
            "canvas of {b} x {l} with prompt length {p}, {n} new tokens and {} seeds do not agree",
            seeds.len()
        )));
    }
    let device = canvas.ids.device();
    let proposer = Proposer { temperature: cfg.temperature, top_p: cfg.top_p, top_k: cfg.top_k, alg: cfg.alg };
    let (blocks, block_len) = cfg.blocks();
    let cache_mode = cfg.block.as_ref().map_or(CacheMode::None, |b| b.cache);
    let threshold = cfg.block.as_ref().and_then(|b| b.threshold);
    let total_steps = if threshold.is_some() { n } else { cfg.steps };
    let columns = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0); // (1, L)
    let stop_ids = Tensor::from_slice(&special.stop).to_device(device);
    let mask_id = Tensor::from_slice(&[special.mask]).to_device(device);

    let mut x = canvas.ids.shallow_clone();
    let mut step_map = Tensor::full([b, n], -1, (Kind::Int64, device));
    let mut finished = Tensor::zeros([b, 1], (Kind::Bool, device));
    let (mut forwards, mut full_forwards) = (0i64, 0i64);
    // Each row counts its own steps (the steps in which it had something to decode): its noise
    // and its step map follow them, so a row does not see how long its neighbours took.
    let mut row_steps = vec![0u64; b as usize];

    for block in 0..blocks {
        let (start, end) = (p + block * block_len, p + (block + 1) * block_len);
        let in_block = columns.ge(start).logical_and(&columns.lt(end));
        let block_steps = if threshold.is_some() { block_len } else { cfg.steps / blocks };
        let ts = timesteps(block_steps, cfg.eps);
        let mut cache: Option<KvCache> = None;
        for i in 0..block_steps as usize {
            let masked = x.eq(special.mask).logical_and(&in_block).logical_and(&finished.logical_not());
            let active: Vec<bool> = Vec::<bool>::try_from(&masked.any_dim(1, false).to_device(Device::Cpu))?;
            if !active.iter().any(|&a| a) {
                break;
            }
            // The forward: full, refresh, or the cached region (from one position before the
            // block, whose hidden state predicts the block's first token).
            let (hidden, offset) = match (cache_mode, &cache) {
                (CacheMode::None, _) => {
                    full_forwards += 1;
                    (model.forward(&x, canvas.attention.as_ref(), Pass::EVAL), 0)
                }
                (_, None) => {
                    full_forwards += 1;
                    let (hidden, kv) = model.forward_filling_cache(&x, canvas.attention.as_ref(), Pass::EVAL);
                    cache = Some(kv);
                    (hidden, 0)
                }
                (mode, Some(kv)) => {
                    let from = start - 1;
                    let len = if mode == CacheMode::Dual { end - from } else { l - from };
                    (model.forward_region(&x.narrow(1, from, len), from, kv, Pass::EVAL)?, from)
                }
            };
            forwards += 1;
            let region = masked.narrow(1, offset, hidden.size()[1]);
            // The mask token is never a proposal (a committed mask would be decoded again forever).
            let logits = model.logits_at(&hidden, &region).index_fill(1, &mask_id, f64::NEG_INFINITY);
            let (token_u, position_u) = step_uniforms(seeds, &row_steps, l, device);
            let step_of_row = Tensor::from_slice(&row_steps.iter().map(|&s| s as i64).collect::<Vec<_>>()).view([b, 1]).to_device(device);
            let proposal = proposer.propose(&logits, &token_u.masked_select(&masked));

            let proposed = x.masked_scatter(&masked, &proposal.tokens);
            let neg_inf = Tensor::full([b, l], f64::NEG_INFINITY, (Kind::Float, device));
            // Threshold decoding orders by the proposed token's probability (Fast-dLLM), the
            // other schedules by the configured confidence (entropy, margin, ...).
            let scores = if threshold.is_some() { &proposal.probability } else { &proposal.confidence };
            let mut confidence = neg_inf.masked_scatter(&masked, scores);
            if cfg.pad_penalty > 0.0 {
                let progress = step_of_row.to_kind(Kind::Float) / total_steps as f64;
                let is_stop = Tensor::isin(&proposed, &stop_ids, false, false).logical_and(&masked);
                confidence -= is_stop.to_kind(Kind::Float) * (progress.neg() + 1.0) * cfg.pad_penalty;
            }

            let commit = if let Some(tau) = threshold {
                let best = ranks(&confidence).eq(0).logical_and(&masked);
                best.logical_or(&confidence.ge(tau).logical_and(&masked))
            } else if cfg.alg == Alg::Origin {
                position_u.lt(transfer_ratio(&ts, i) as f64).logical_and(&masked)
            } else {
                let counts = masked.sum_dim_intlist(1, true, Kind::Float); // (B, 1)
                let ratio = transfer_ratio(&ts, i) as f64;
                let quota = match cfg.quota {
                    Quota::PerRow => (&counts * ratio).floor(),
                    Quota::BatchMean => {
                        let active = finished.logical_not().sum(Kind::Float).clamp_min(1.0);
                        let mean = counts.sum(Kind::Float) / active;
                        (mean * ratio).floor().expand([b, 1], false).minimum(&counts)
                    }
                };
                let quota = if i + 1 == block_steps as usize { counts } else { quota };
                let key = if cfg.alg_temp > 0.0 {
                    // Gumbel-top-k: drawing positions without replacement from
                    // softmax(confidence / alg_temp).
                    let gumbel = -(-position_u.log()).log();
                    &confidence / cfg.alg_temp + gumbel
                } else {
                    confidence.shallow_clone()
                };
                ranks(&key).to_kind(Kind::Float).lt_tensor(&quota).logical_and(&masked)
            };
            x = x.where_self(&commit.logical_not(), &proposed);
            let committed = commit.narrow(1, p, n);
            step_map = step_of_row.expand([b, n], false).where_self(&committed, &step_map);
            for (steps, &a) in row_steps.iter_mut().zip(&active) {
                *steps += u64::from(a);
            }

            if cfg.early_stop {
                finished = finish_rows(&mut x, &finished, p, n, special, &stop_ids);
            }
        }
        if any(&x.narrow(1, start, block_len).eq(special.mask).logical_and(&finished.logical_not())) {
            return Err(RolloutError::Request(format!("block {block} kept masked positions after its last step")));
        }
    }
    Ok(Decoded { ids: x, step_map, forwards, full_forwards })
}

/// Whether any entry is true (one device synchronisation).
fn any(t: &Tensor) -> bool {
    t.any().int64_value(&[]) != 0
}

/// Rank of each entry within its row, 0 for the largest (ties broken by position).
fn ranks(key: &Tensor) -> Tensor {
    key.argsort_stable(true, 1, true).argsort_stable(true, 1, false)
}

/// Rows whose answer is fixed (a committed stop token with no mask before it) are finished:
/// their remaining masks become pad. Returns the updated (B, 1) finished flags.
fn finish_rows(x: &mut Tensor, finished: &Tensor, p: i64, n: i64, special: &SpecialIds, stop_ids: &Tensor) -> Tensor {
    let response = x.narrow(1, p, n);
    let masked = response.eq(special.mask);
    let positions = Tensor::arange(n, (Kind::Int64, x.device())).unsqueeze(0);
    let is_stop = Tensor::isin(&response, stop_ids, false, false).logical_and(&masked.logical_not());
    let first_stop = positions.where_self(&is_stop, &Tensor::from(n).to_device(x.device())).amin(1, true); // (B, 1)
    let masked_before = masked.logical_and(&positions.lt_tensor(&first_stop)).any_dim(1, true);
    let done = first_stop.lt(n).logical_and(&masked_before.logical_not()).logical_or(finished);
    let fill = masked.logical_and(&done);
    if any(&fill) {
        let filled = response.masked_fill(&fill, special.pad);
        *x = Tensor::cat(&[x.narrow(1, 0, p), filled], 1);
    }
    done
}

/// Builds a canvas from prompts of possibly different lengths: left-padded with `pad` to the
/// longest, N masks appended, a padding mask only when lengths differ.
pub fn build_canvas(prompts: &[&[i64]], new_tokens: i64, special: &SpecialIds, device: Device) -> Result<Canvas> {
    let p = prompts.iter().map(|q| q.len()).max().unwrap_or(0) as i64;
    if p == 0 || prompts.iter().any(|q| q.is_empty()) {
        return Err(RolloutError::Request("every prompt needs at least one token".into()));
    }
    let l = p + new_tokens;
    let mut ids = Vec::with_capacity(prompts.len() * l as usize);
    let mut attention = Vec::with_capacity(prompts.len() * l as usize);
    for q in prompts {
        let pad = p as usize - q.len();
        ids.extend(std::iter::repeat_n(special.pad, pad).chain(q.iter().copied()).chain(std::iter::repeat_n(special.mask, new_tokens as usize)));
        attention.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, l as usize - pad)));
    }
    let shape = [prompts.len() as i64, l];
    let ragged = prompts.iter().any(|q| q.len() as i64 != p);
    Ok(Canvas {
        ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        prompt_len: p,
        attention: ragged.then(|| Tensor::from_slice(&attention).view(shape).to_device(device)),
    })
}
