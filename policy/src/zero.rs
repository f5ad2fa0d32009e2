//! AdamW across data-parallel ranks: replicated (every rank holds the whole optimizer state
//! and all-reduces the gradients), or ZeRO-2-sharded (DeepSpeed's stage 2, verl's
//! `zero_stage = 2`).
//!
//! ZeRO-2 here: the trainable parameters, in name order, are laid end to end in one flat
//! vector padded to a multiple of the world size; rank `r` owns the `r`-th contiguous shard of
//! it. At the step the gradients are reduce-scattered in fp32 buckets (each rank receives the
//! sum of its shard only), the global norm is the all-reduced sum of the shards' squares (the
//! same clipping as unsharded), AdamW updates the rank's fp32 master shard and moments, and the
//! updated shards are all-gathered back into every rank's parameters in their own kind. Per
//! rank this keeps 12 bytes an element of optimizer state for `1/world` of the elements instead
//! of all of them. The whole gradients still exist during the backward (nothing is reduced
//! while it runs): that is the memory ZeRO-2 proper would save as well.

use std::path::{Path, PathBuf};

use dllm_dist::{ReduceOp, World, BUCKET_BYTES};
use tch::{Kind, Tensor};

use crate::checkpoint::save_tensors_file;
use crate::error::{io_error, read_json, PolicyError, Result};
use crate::optim::{adam_update, AdamW, AdamWConfig};

/// The optimizer of a data-parallel job: whole on every rank, or sharded (ZeRO-2).
pub enum ParallelAdamW {
    Replicated(AdamW),
    Sharded(ZeroAdamW),
}

impl ParallelAdamW {
    /// `zero_stage` 2 shards the state across the ranks of `world`; 0, or a world of one
    /// process (nothing to shard across), keeps it whole.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig, zero_stage: u8, world: &World) -> Self {
        if zero_stage >= 2 && world.size > 1 {
            ParallelAdamW::Sharded(ZeroAdamW::new(params, config, world))
        } else {
            ParallelAdamW::Replicated(AdamW::new(params, config))
        }
    }

    pub fn is_sharded(&self) -> bool {
        matches!(self, ParallelAdamW::Sharded(_))
    }

    /// The optimized tensors, in name order (the same on every rank).
    pub fn parameters(&self) -> Vec<Tensor> {
        match self {
            ParallelAdamW::Replicated(o) => o.parameters(),
            ParallelAdamW::Sharded(o) => o.params.iter().map(|p| p.shallow_clone()).collect(),
        }
    }

    pub fn zero_grad(&mut self) {
        match self {
            ParallelAdamW::Replicated(o) => o.zero_grad(),
            ParallelAdamW::Sharded(o) => o.zero_grad(),
        }
    }

    /// Sums the gradients across ranks (all-reduced, or reduce-scattered into this rank's
    /// shard) and clips them to the global L2 norm `max_norm`; returns the norm before clipping,
    /// the same on every rank.
    pub fn reduce_and_clip(&mut self, world: &World, max_norm: f64) -> Result<f64> {
        match self {
            ParallelAdamW::Replicated(o) => {
                world.all_reduce_gradients(&o.parameters())?;
                Ok(o.clip_grad_norm(max_norm))
            }
            ParallelAdamW::Sharded(o) => {
                o.reduce_scatter_gradients(world)?;
                o.clip_grad_norm(world, max_norm)
            }
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        match self {
            ParallelAdamW::Replicated(o) => o.set_lr(lr),
            ParallelAdamW::Sharded(o) => o.config.lr = lr,
        }
    }

    /// One AdamW step with the reduced gradients (sharded: then every rank's parameters are
    /// the gathered shards).
    pub fn step(&mut self, world: &World) -> Result<()> {
        match self {
            ParallelAdamW::Replicated(o) => {
                o.step();
                Ok(())
            }
            ParallelAdamW::Sharded(o) => o.step(world),
        }
    }

    /// Optimizer steps taken (the bias-correction count).
    pub fn steps_taken(&self) -> i64 {
        match self {
            ParallelAdamW::Replicated(o) => o.step,
            ParallelAdamW::Sharded(o) => o.step,
        }
    }

    /// The files this rank writes into a checkpoint folder: `optimizer.safetensors` (whole,
    /// rank 0 only) or its shard `optimizer.rank{r}-of-{w}.safetensors`.
    pub fn state_file(&self, dir: &Path, world: &World) -> Option<PathBuf> {
        match self {
            ParallelAdamW::Replicated(_) => world.is_main().then(|| dir.join("optimizer.safetensors")),
            ParallelAdamW::Sharded(o) => Some(dir.join(shard_file_name(o.rank, o.world_size))),
        }
    }

    /// Writes this rank's part of the state into the checkpoint folder `dir` (nothing on the
    /// ranks past 0 when replicated).
    pub fn save(&self, dir: &Path, world: &World) -> Result<()> {
        let Some(path) = self.state_file(dir, world) else { return Ok(()) };
        match self {
            ParallelAdamW::Replicated(o) => o.save(&path),
            ParallelAdamW::Sharded(o) => o.save(&path),
        }
    }

    /// Restores this rank's part from the checkpoint folder `dir`.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        match self {
            ParallelAdamW::Replicated(o) => {
                let path = dir.join("optimizer.safetensors");
                if !path.exists() && has_shards(dir) {
                    return Err(PolicyError::Checkpoint {
                        path: dir.into(),
                        reason: "the optimizer state is sharded (the run trained with actor.zero_stage = 2): resume it with zero_stage = 2 on its world size".into(),
                    });
                }
                o.load(&path)
            }
            ParallelAdamW::Sharded(o) => o.load(&dir.join(shard_file_name(o.rank, o.world_size))),
        }
    }
}

fn shard_file_name(rank: usize, world_size: usize) -> String {
    format!("optimizer.rank{rank}-of-{world_size}.safetensors")
}

fn has_shards(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("optimizer.rank")))
}

/// One parameter's part of a flat range: `len` elements from `offset` in parameter `index`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    index: usize,
    offset: i64,
    len: i64,
}

/// ZeRO-2 AdamW: this rank's shard of the fp32 master weights and moments.
pub struct ZeroAdamW {
    pub config: AdamWConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Where each parameter starts in the flat vector, and one past the last element.
    starts: Vec<i64>,
    numel: i64,
    /// Elements per shard (the flat vector padded to `shard_len · world_size`).
    shard_len: i64,
    rank: usize,
    world_size: usize,
    /// The kind the parameters are gathered in (theirs when they share one, else fp32).
    gather_kind: Kind,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// This rank's reduced gradient shard (fp32), written by the reduce-scatter.
    grad: Tensor,
    /// (start in the shard, length, weight decay) of each parameter's part of the shard.
    decay: Vec<(i64, i64, f64)>,
    pub step: i64,
}

impl ZeroAdamW {
    /// Shards `params` (named; only those that require grad) across `world`'s ranks.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig, world: &World) -> Self {
        let _guard = tch::no_grad_guard();
        let mut params: Vec<(String, Tensor)> = params.into_iter().filter(|(_, p)| p.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut starts = Vec::with_capacity(params.len() + 1);
        let mut numel = 0i64;
        for (_, p) in &params {
            starts.push(numel);
            numel += p.numel() as i64;
        }
        starts.push(numel);
        let world_size = world.size.max(1);
        let shard_len = (numel + world_size as i64 - 1) / world_size as i64;
        let first_kind = params.first().map_or(Kind::Float, |(_, p)| p.kind());
        let gather_kind = if params.iter().all(|(_, p)| p.kind() == first_kind) { first_kind } else { Kind::Float };
        let device = params.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let mut zero = ZeroAdamW {
            names,
            params,
            starts,
            numel,
            shard_len,
            rank: world.rank,
            world_size,
            gather_kind,
            master: Tensor::zeros([shard_len], (Kind::Float, device)),
            exp_avg: Tensor::zeros([shard_len], (Kind::Float, device)),
            exp_avg_sq: Tensor::zeros([shard_len], (Kind::Float, device)),
            grad: Tensor::zeros([shard_len], (Kind::Float, device)),
            decay: Vec::new(),
            step: 0,
            config,
        };
        let begin = zero.rank as i64 * shard_len;
        for piece in zero.pieces(begin, begin + shard_len) {
            let name = &zero.names[piece.index];
            let decays = !zero.config.no_decay.iter().any(|pattern| name.contains(pattern.as_str()));
            let at = zero.starts[piece.index] + piece.offset - begin;
            zero.decay.push((at, piece.len, if decays { zero.config.weight_decay } else { 0.0 }));
        }
        let master = zero.read_flat(begin, shard_len, |p| Some(p.shallow_clone()));
        zero.master.copy_(&master);
        zero
    }

    /// The parameters' parts of the flat range `[begin, end)` (the padding past the last
    /// parameter has none).
    fn pieces(&self, begin: i64, end: i64) -> Vec<Piece> {
        let end = end.min(self.numel);
        if begin >= end {
            return Vec::new();
        }
        // The parameter holding `begin`: the last start at or before it (empty ones skipped).
        let mut index = self.starts.partition_point(|&s| s <= begin).saturating_sub(1);
        let mut at = begin;
        let mut pieces = Vec::new();
        while at < end && index < self.params.len() {
            let (start, stop) = (self.starts[index], self.starts[index + 1]);
            if stop > at {
                let len = stop.min(end) - at;
                pieces.push(Piece { index, offset: at - start, len });
                at += len;
            }
            index += 1;
        }
        pieces
    }

    /// The flat range `[begin, begin + len)` of `source(parameter)` (e.g. its gradient) as one
    /// fp32 vector; padding and parameters without a `source` read as zeros.
    fn read_flat(&self, begin: i64, len: i64, source: impl Fn(&Tensor) -> Option<Tensor>) -> Tensor {
        let device = self.master.device();
        let mut parts = Vec::new();
        let mut covered = 0i64;
        for piece in self.pieces(begin, begin + len) {
            let part = match source(&self.params[piece.index]) {
                Some(t) if t.defined() => t.reshape([-1]).narrow(0, piece.offset, piece.len).to_kind(Kind::Float),
                _ => Tensor::zeros([piece.len], (Kind::Float, device)),
            };
            parts.push(part.to_device(device));
            covered += piece.len;
        }
        if covered < len {
            parts.push(Tensor::zeros([len - covered], (Kind::Float, device)));
        }
        Tensor::cat(&parts, 0)
    }

    /// Writes `values` (in the gather kind) over the flat range starting at `begin` of every
    /// parameter it covers.
    fn write_flat(&self, begin: i64, values: &Tensor) {
        let len = values.size()[0];
        let mut at = 0i64;
        for piece in self.pieces(begin, begin + len) {
            let p = &self.params[piece.index];
            let mut target = p.detach().view([-1]).narrow(0, piece.offset, piece.len);
            target.copy_(&values.narrow(0, at, piece.len).to_kind(p.kind()));
            at += piece.len;
        }
    }

    /// Elements per rank in one bucket: about [`BUCKET_BYTES`] of fp32 across all ranks.
    fn bucket_len(&self) -> i64 {
        (BUCKET_BYTES / 4 / self.world_size as i64).max(1)
    }

    fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Every rank's gradients summed into this rank's shard, bucket by bucket: bucket `b` sends
    /// rank `r` the sum of its elements `[b·B, (b+1)·B)` of shard `r`.
    fn reduce_scatter_gradients(&mut self, world: &World) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let group = world.group().ok_or_else(|| PolicyError::Invalid("ZeRO-2 needs a process group".into()))?;
        let bucket = self.bucket_len();
        let mut off = 0i64;
        while off < self.shard_len {
            let len = bucket.min(self.shard_len - off);
            let chunks: Vec<Tensor> = (0..self.world_size).map(|r| self.read_flat(r as i64 * self.shard_len + off, len, |p| Some(p.grad()))).collect();
            let mut input = Tensor::cat(&chunks, 0);
            let mut output = Tensor::zeros([len], (Kind::Float, self.master.device()));
            group.reduce_scatter(&mut output, &mut input, ReduceOp::Sum)?;
            self.grad.narrow(0, off, len).copy_(&output);
            off += len;
        }
        Ok(())
    }

    /// The global norm of the reduced gradients (from every shard), clipped as
    /// `torch.nn.utils.clip_grad_norm_` clips; returns the norm before clipping.
    fn clip_grad_norm(&mut self, world: &World, max_norm: f64) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let mut square = self.grad.square().sum(Kind::Float).reshape([1]);
        world.all_reduce(&mut square, ReduceOp::Sum)?;
        let norm = square.sqrt().double_value(&[0]);
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let _ = self.grad.g_mul_scalar_(coef);
        }
        Ok(norm)
    }

    /// AdamW on this rank's shard, then every shard gathered into every rank's parameters.
    fn step(&mut self, world: &World) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let lr = self.config.lr;
        let update = adam_update(&self.config, self.step, &mut self.exp_avg, &mut self.exp_avg_sq, &self.grad);
        for &(at, len, weight_decay) in &self.decay {
            if weight_decay != 0.0 {
                let _ = self.master.narrow(0, at, len).g_mul_scalar_(1.0 - lr * weight_decay);
            }
        }
        let _ = self.master.g_sub_(&update);
        self.gather_parameters(world)
    }

    /// Every rank's master shard, in the parameters' kind, copied into the parameters.
    fn gather_parameters(&self, world: &World) -> Result<()> {
        let group = world.group().ok_or_else(|| PolicyError::Invalid("ZeRO-2 needs a process group".into()))?;
        let bucket = self.bucket_len();
        let mut off = 0i64;
        while off < self.shard_len {
            let len = bucket.min(self.shard_len - off);
            let mut mine = self.master.narrow(0, off, len).to_kind(self.gather_kind).contiguous();
            let mut all = Tensor::zeros([len * self.world_size as i64], (self.gather_kind, self.master.device()));
            group.all_gather(&mut all, &mut mine)?;
            for r in 0..self.world_size {
                self.write_flat(r as i64 * self.shard_len + off, &all.narrow(0, r as i64 * len, len));
            }
            off += len;
        }
        Ok(())
    }

    /// Saves this rank's shard (fp32 `master`, `exp_avg`, `exp_avg_sq`) and, beside it
    /// (`<stem>.step.json`), the step count and the layout it belongs to.
    fn save(&self, path: &Path) -> Result<()> {
        let named = [("master", &self.master), ("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)];
        let named: Vec<(String, Tensor)> = named.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect();
        save_tensors_file(path, &named, Kind::Float)?;
        let meta = serde_json::json!({
            "step": self.step, "rank": self.rank, "world_size": self.world_size,
            "numel": self.numel, "shard_len": self.shard_len, "parameters": self.names.len(),
        });
        let step_path = path.with_extension("step.json");
        std::fs::write(&step_path, meta.to_string()).map_err(io_error(&step_path))
    }

    /// Restores what [`ZeroAdamW::save`] wrote, after checking that it is this rank's shard of
    /// these parameters.
    fn load(&mut self, path: &Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let bad = |reason: String| PolicyError::Checkpoint { path: path.into(), reason };
        if !path.exists() {
            return Err(bad(format!(
                "no optimizer shard for rank {} of {} (the run saved another world size or zero stage? resume it as it ran)",
                self.rank, self.world_size
            )));
        }
        let step_path = path.with_extension("step.json");
        let meta: serde_json::Value = read_json(&step_path)?;
        let expected = [("world_size", self.world_size as i64), ("rank", self.rank as i64), ("numel", self.numel), ("shard_len", self.shard_len)];
        for (key, value) in expected {
            if meta[key].as_i64() != Some(value) {
                return Err(bad(format!("`{key}` is {} in the shard and {value} here: the shard belongs to another layout", meta[key])));
            }
        }
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        for (name, target) in [("master", &mut self.master), ("exp_avg", &mut self.exp_avg), ("exp_avg_sq", &mut self.exp_avg_sq)] {
            let saved = tensors.get(name).ok_or_else(|| bad(format!("the shard lacks `{name}`")))?;
            if saved.size() != target.size() {
                return Err(bad(format!("`{name}` has shape {:?}, not [{}]", saved.size(), self.shard_len)));
            }
            target.copy_(saved);
        }
        self.step = meta["step"].as_i64().ok_or_else(|| bad("its step.json lacks `step`".into()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    #[test]
    fn pieces_cover_a_range_across_parameters_and_padding() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _a = root.var("a", &[3], nn::Init::Const(1.0));
        let _b = root.var("b", &[2, 2], nn::Init::Const(2.0));
        let zero = ZeroAdamW::new(vs.variables().into_iter().collect(), AdamWConfig::default(), &World::single());
        assert_eq!(zero.numel, 7);
        let p = |index, offset, len| Piece { index, offset, len };
        assert_eq!(zero.pieces(0, 7), vec![p(0, 0, 3), p(1, 0, 4)]);
        assert_eq!(zero.pieces(2, 5), vec![p(0, 2, 1), p(1, 0, 2)]);
        assert_eq!(zero.pieces(3, 4), vec![p(1, 0, 1)]);
        assert_eq!(zero.pieces(6, 10), vec![p(1, 3, 1)], "the padding past the end has no piece");
        let flat: Vec<f32> = Vec::try_from(zero.read_flat(1, 8, |t| Some(t.shallow_clone()))).unwrap();
        assert_eq!(flat, vec![1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0]);
        zero.write_flat(2, &Tensor::from_slice(&[5.0f32, 6.0]));
        let flat: Vec<f32> = Vec::try_from(zero.read_flat(0, 7, |t| Some(t.shallow_clone()))).unwrap();
        assert_eq!(flat, vec![1.0, 1.0, 5.0, 6.0, 2.0, 2.0, 2.0]);
    }
}
