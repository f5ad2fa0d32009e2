//! Many prompts x G samples in one call: rows are grouped into batches, decoded, and returned
//! as one [`Rollout`] per (prompt, sample), in request order.
//!
//! Two ways to batch prompts of different lengths:
//! - [`Batching::Bucket`]: only prompts of equal length share a batch, so there is never padding
//!   and attention takes the fast path with no mask (RL groups are G samples of one prompt:
//!   always one bucket);
//! - [`Batching::Pad`]: rows sorted by length and left-padded within each batch, with a padding
//!   mask (fewer, fuller batches; a masked attention kernel).
//!
//! `dllm-rl bench generate` measures both.

use std::collections::BTreeMap;

use dllm_policy::DreamModel;
use tch::{Device, Tensor};

use crate::config::SamplerConfig;
use crate::error::{Result, RolloutError};
use crate::sampler::{build_canvas, sample, SpecialIds};

/// One prompt and the seeds of its samples (one rollout per seed).
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<i64>,
    pub seeds: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    Bucket,
    Pad,
}

/// One sample: its response canvas (N tokens) and the step each token was committed at.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    pub request: usize,
    pub sample: usize,
    pub seed: u64,
    pub response: Vec<i64>,
    /// Per response position: the step that committed it; -1 for pad filled after the answer.
    pub step_map: Vec<i64>,
}

impl Rollout {
    /// The response up to (not including) its first stop id.
    pub fn completion(&self, stop: &[i64]) -> &[i64] {
        let end = self.response.iter().position(|t| stop.contains(t)).unwrap_or(self.response.len());
        &self.response[..end]
    }
}

/// Work done by [`generate`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GenerateStats {
    pub batches: usize,
    pub forwards: i64,
    pub full_forwards: i64,
}

/// Decodes every request's samples, at most `max_batch` rows at a time; after each batch,
/// `on_batch(its rollouts, rows done, rows in all)` (to start verifying while the next batch
/// decodes, or to draw progress).
pub fn generate(
    model: &DreamModel,
    cfg: &SamplerConfig,
    requests: &[Request],
    special: &SpecialIds,
    batching: Batching,
    max_batch: usize,
    on_batch: &mut dyn FnMut(&[Rollout], usize, usize),
) -> Result<(Vec<Rollout>, GenerateStats)> {
    cfg.validate()?;
    let limit = model.config.max_position_embeddings;
    for (i, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            return Err(RolloutError::Request(format!("prompt {i} is empty")));
        }
        let len = r.prompt.len() as i64 + cfg.max_new_tokens;
        if len > limit {
            return Err(RolloutError::Request(format!(
                "prompt {i}: {} tokens + {} new tokens exceed max_position_embeddings {limit}",
                r.prompt.len(),
                cfg.max_new_tokens
            )));
        }
    }
    let rows: Vec<(usize, usize)> =
        requests.iter().enumerate().flat_map(|(i, r)| (0..r.seeds.len()).map(move |s| (i, s))).collect();
    let batches: Vec<Vec<(usize, usize)>> = match batching {
        Batching::Bucket => {
            let mut buckets: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
            for row in rows.iter().copied() {
                buckets.entry(requests[row.0].prompt.len()).or_default().push(row);
            }
            buckets.into_values().flat_map(|b| b.chunks(max_batch.max(1)).map(<[_]>::to_vec).collect::<Vec<_>>()).collect()
        }
        Batching::Pad => {
            let mut sorted = rows.clone();
            sorted.sort_by_key(|&(i, _)| requests[i].prompt.len());
            sorted.chunks(max_batch.max(1)).map(<[_]>::to_vec).collect()
        }
    };
    let device = model.placement.device;
    let mut out: Vec<Option<Rollout>> = vec![None; rows.len()];
    let index: BTreeMap<(usize, usize), usize> = rows.iter().enumerate().map(|(k, &row)| (row, k)).collect();
    let mut stats = GenerateStats::default();
    let mut done = 0;
    for batch in &batches {
        let prompts: Vec<&[i64]> = batch.iter().map(|&(i, _)| requests[i].prompt.as_slice()).collect();
        let seeds: Vec<u64> = batch.iter().map(|&(i, s)| requests[i].seeds[s]).collect();
        let canvas = build_canvas(&prompts, cfg.max_new_tokens, special, device)?;
        let decoded = sample(model, cfg, &canvas, &seeds, special)?;
        stats.batches += 1;
        stats.forwards += decoded.forwards;
        stats.full_forwards += decoded.full_forwards;
        let n = cfg.max_new_tokens;
        let responses = to_rows(&decoded.ids.narrow(1, canvas.prompt_len, n).to_device(Device::Cpu))?;
        let maps = to_rows(&decoded.step_map.to_device(Device::Cpu))?;
        let mut finished = Vec::with_capacity(batch.len());
        for ((&(request, sample), response), step_map) in batch.iter().zip(responses).zip(maps) {
            let seed = requests[request].seeds[sample];
            finished.push(Rollout { request, sample, seed, response, step_map });
        }
        done += batch.len();
        on_batch(&finished, done, rows.len());
        for r in finished {
            let slot = index[&(r.request, r.sample)];
            out[slot] = Some(r);
        }
    }
    Ok((out.into_iter().flatten().collect(), stats))
}

fn to_rows(t: &Tensor) -> Result<Vec<Vec<i64>>> {
    let (b, n) = (t.size()[0], t.size()[1]);
    let flat: Vec<i64> = Vec::try_from(&t.contiguous().view([-1]))?;
    Ok((0..b as usize).map(|r| flat[r * n as usize..(r + 1) * n as usize].to_vec()).collect())
}
