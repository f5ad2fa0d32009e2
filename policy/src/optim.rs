//! AdamW whose state we own, gradient clipping, and learning-rate schedules.
//!
//! libtorch's C++ AdamW keeps its moments in the parameters' dtype (bf16 moments for a bf16
//! model) and tch cannot save them, so a resumed run would restart its moments from zero. This
//! one keeps fp32 moments (and, for bf16 weights, optional fp32 master copies), saves and loads
//! them as safetensors, and computes exactly what `torch.optim.AdamW` computes (decoupled weight
//! decay, bias-corrected moments; a test compares it with libtorch's own AdamW).
//!
//! Parameters are named (their Hugging Face or PEFT names), so the saved state is keyed by name
//! and survives a change of parameter order.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::save_tensors_file;
use crate::error::{PolicyError, Result};

/// Hyper-parameters, named as in `torch.optim.AdamW` / verl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Parameters whose name contains one of these get no weight decay (biases and norms, by
    /// the usual rule; an empty list decays everything, as verl does).
    pub no_decay: Vec<String>,
    /// Keep fp32 master copies of low-precision parameters: the update is applied to the fp32
    /// copy and cast back, so steps smaller than bf16's resolution are not lost.
    pub master_weights: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-6,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            no_decay: vec!["bias".into(), "norm".into()],
            master_weights: true,
        }
    }
}

struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// fp32 copy of a low-precision parameter.
    master: Option<Tensor>,
    weight_decay: f64,
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    /// Optimizer steps taken (the bias-correction count).
    pub step: i64,
}

impl AdamW {
    /// Optimizes `params` (named, e.g. from `VarStore::variables()`); only tensors that require
    /// grad are kept.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let _guard = tch::no_grad_guard();
        let mut params: Vec<(String, Tensor)> = params.into_iter().filter(|(_, p)| p.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let zeros = || Tensor::zeros_like(&param).to_kind(Kind::Float);
                let master = (config.master_weights && param.kind() != Kind::Float).then(|| param.detach().to_kind(Kind::Float));
                let decays = !config.no_decay.iter().any(|pattern| name.contains(pattern.as_str()));
                Slot {
                    exp_avg: zeros(),
                    exp_avg_sq: zeros(),
                    master,
                    weight_decay: if decays { config.weight_decay } else { 0.0 },
                    name,
                    param,
                }
            })
            .collect();
        AdamW { config, slots, step: 0 }
    }

    /// The optimized tensors, in name order (the same order on every rank of a job).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Sets every gradient to zero (keeping the buffers).
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The global L2 norm of the gradients (computed in fp32); when above `max_norm`, every
    /// gradient is scaled by `max_norm / (norm + 1e-6)`, as `torch.nn.utils.clip_grad_norm_`.
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.slots.iter().map(|s| s.param.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
        let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[]);
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        }
        norm
    }

    /// One AdamW step with the current gradients (parameters without a gradient are skipped).
    pub fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let lr = self.config.lr;
        for s in &mut self.slots {
            let grad = s.param.grad();
            if !grad.defined() {
                continue;
            }
            let update = adam_update(&self.config, self.step, &mut s.exp_avg, &mut s.exp_avg_sq, &grad.to_kind(Kind::Float));
            match &mut s.master {
                Some(master) => {
                    let _ = master.g_mul_scalar_(1.0 - lr * s.weight_decay).g_sub_(&update);
                    s.param.shallow_clone().copy_(master);
                }
                None => {
                    let mut p32 = s.param.to_kind(Kind::Float);
                    let _ = p32.g_mul_scalar_(1.0 - lr * s.weight_decay).g_sub_(&update);
                    s.param.shallow_clone().copy_(&p32);
                }
            }
        }
    }

    /// Saves moments and master weights (fp32 safetensors keyed by parameter name) and the step
    /// count (`<path stem>.step.json` beside it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named = Vec::new();
        for s in &self.slots {
            named.push((format!("{}.exp_avg", s.name), s.exp_avg.shallow_clone()));
            named.push((format!("{}.exp_avg_sq", s.name), s.exp_avg_sq.shallow_clone()));
            if let Some(m) = &s.master {
                named.push((format!("{}.master", s.name), m.shallow_clone()));
            }
        }
        save_tensors_file(path, &named, Kind::Float)?;
        let step_path = path.with_extension("step.json");
        std::fs::write(&step_path, serde_json::json!({"step": self.step}).to_string()).map_err(crate::error::io_error(&step_path))
    }

    /// Restores what [`AdamW::save`] wrote; every parameter's state must be there.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        let missing = |name: String| PolicyError::Checkpoint { path: path.into(), reason: format!("optimizer state lacks `{name}`") };
        for s in &mut self.slots {
            for (suffix, target) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                let key = format!("{}.{suffix}", s.name);
                let saved = tensors.get(&key).ok_or_else(|| missing(key.clone()))?;
                target.copy_(saved);
            }
            if let Some(m) = &mut s.master {
                let key = format!("{}.master", s.name);
                m.copy_(tensors.get(&key).ok_or_else(|| missing(key.clone()))?);
            }
        }
        let step_path = path.with_extension("step.json");
        let step: serde_json::Value = crate::error::read_json(&step_path)?;
        self.step = step["step"].as_i64().ok_or_else(|| missing("step".into()))?;
        Ok(())
    }
}

/// Adam's part of a step: advances the fp32 moments by `grad` and returns the bias-corrected
/// update `lr · m̂ / (√v̂ + eps)` for step `step` (1-based); decoupled weight decay is the
/// caller's.
pub(crate) fn adam_update(config: &AdamWConfig, step: i64, exp_avg: &mut Tensor, exp_avg_sq: &mut Tensor, grad: &Tensor) -> Tensor {
    let (b1, b2) = config.betas;
    let correction1 = 1.0 - b1.powi(step as i32);
    let correction2 = 1.0 - b2.powi(step as i32);
    let _ = exp_avg.g_mul_scalar_(b1).g_add_(&(grad * (1.0 - b1)));
    let _ = exp_avg_sq.g_mul_scalar_(b2).g_add_(&(grad.square() * (1.0 - b2)));
    let denom = exp_avg_sq.sqrt() / correction2.sqrt() + config.eps;
    &*exp_avg / denom * (config.lr / correction1)
}

/// Learning rate by optimizer step: constant, or linear warm-up then cosine decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    Constant { warmup_steps: i64 },
    Cosine { warmup_steps: i64, total_steps: i64, min_ratio: f64 },
}

impl Default for LrSchedule {
    fn default() -> Self {
        // Dream-Coder: constant 5e-7, no warm-up.
        LrSchedule::Constant { warmup_steps: 0 }
    }
}

impl LrSchedule {
    /// The learning rate at optimizer step `step` (0-based) for peak rate `peak`.
    pub fn lr(&self, peak: f64, step: i64) -> f64 {
        let warm = |w: i64| if w > 0 && step < w { (step + 1) as f64 / w as f64 } else { 1.0 };
        match *self {
            LrSchedule::Constant { warmup_steps } => peak * warm(warmup_steps),
            LrSchedule::Cosine { warmup_steps, total_steps, min_ratio } => {
                if step < warmup_steps {
                    return peak * warm(warmup_steps);
                }
                let span = (total_steps - warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).clamp(0.0, 1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                peak * (min_ratio + (1.0 - min_ratio) * cosine)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{nn, Device};

    /// Two parameters with fixed values and a loss whose gradients vary with them.
    fn setup(vs: &nn::VarStore) -> (Tensor, Tensor) {
        let root = vs.root();
        let w = root.var_copy("w", &Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25]).view([2, 2]));
        let b = root.var_copy("bias", &Tensor::from_slice(&[0.1f32, -0.2]));
        (w, b)
    }

    fn loss(w: &Tensor, b: &Tensor, step: i64) -> Tensor {
        let x = Tensor::from_slice(&[1.0f32, 2.0 + step as f32]).view([1, 2]);
        (x.matmul(w) + b).square().sum(Kind::Float)
    }

    #[test]
    fn matches_libtorchs_adamw() {
        let cfg = AdamWConfig { lr: 0.01, weight_decay: 0.1, no_decay: vec![], master_weights: false, ..AdamWConfig::default() };
        // Ours.
        let vs = nn::VarStore::new(Device::Cpu);
        let (w, b) = setup(&vs);
        let mut ours = AdamW::new(vs.variables().into_iter().collect(), cfg.clone());
        // libtorch's.
        let vs2 = nn::VarStore::new(Device::Cpu);
        let (w2, b2) = setup(&vs2);
        let mut theirs = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.1, eps: 1e-8, amsgrad: false }.build(&vs2, 0.01).unwrap();
        for step in 0..5 {
            ours.zero_grad();
            loss(&w, &b, step).backward();
            ours.step();
            theirs.zero_grad();
            loss(&w2, &b2, step).backward();
            theirs.step();
        }
        assert!(w.allclose(&w2, 1e-6, 1e-7, false), "{w:?} vs {w2:?}");
        assert!(b.allclose(&b2, 1e-6, 1e-7, false));
    }

    #[test]
    fn save_and_load_resume_exactly() {
        let cfg = AdamWConfig { lr: 0.05, ..AdamWConfig::default() };
        let run = |split_at: Option<i64>| {
            let vs = nn::VarStore::new(Device::Cpu);
            let (w, b) = setup(&vs);
            let mut opt = AdamW::new(vs.variables().into_iter().collect(), cfg.clone());
            let dir = tempfile::tempdir().unwrap();
            for step in 0..6 {
                if Some(step) == split_at {
                    // Save, then continue from a fresh optimizer that loads the state.
                    opt.save(&dir.path().join("opt.safetensors")).unwrap();
                    opt = AdamW::new(vs.variables().into_iter().collect(), cfg.clone());
                    opt.load(&dir.path().join("opt.safetensors")).unwrap();
                }
                opt.zero_grad();
                loss(&w, &b, step).backward();
                opt.step();
            }
            (w.copy(), b.copy(), opt.step)
        };
        let (w1, b1, s1) = run(None);
        let (w2, b2, s2) = run(Some(3));
        assert!(w1.equal(&w2) && b1.equal(&b2), "resumed run differs");
        assert_eq!((s1, s2), (6, 6));
    }

    #[test]
    fn bf16_weights_move_with_fp32_masters_and_not_without() {
        // A step far below bf16's resolution at 1.0 (2^-8): only the master copy accumulates it.
        for master in [true, false] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::BFloat16);
            let p = vs.root().var_copy("w", &Tensor::ones([4], (Kind::BFloat16, Device::Cpu)));
            assert_eq!(p.kind(), Kind::BFloat16);
            let cfg = AdamWConfig { lr: 1e-4, weight_decay: 0.0, master_weights: master, ..AdamWConfig::default() };
            let mut opt = AdamW::new(vs.variables().into_iter().collect(), cfg);
            for _ in 0..100 {
                opt.zero_grad();
                p.to_kind(Kind::Float).sum(Kind::Float).backward();
                opt.step();
            }
            let moved = 1.0 - p.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            if master {
                assert!((moved - 0.01).abs() < 0.004, "master weights: moved {moved}");
            } else {
                assert_eq!(moved, 0.0, "without masters bf16 rounds every step away");
            }
        }
    }

    #[test]
    fn clipping_returns_the_norm_and_scales() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("w", &Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let mut opt = AdamW::new(vs.variables().into_iter().collect(), AdamWConfig::default());
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        assert!((opt.clip_grad_norm(1.0) - 5.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
        assert!((opt.clip_grad_norm(10.0) - 1.0).abs() < 1e-5, "below the limit: unchanged");
    }

    #[test]
    fn no_decay_patterns_and_schedules() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _params = setup(&vs);
        let opt = AdamW::new(vs.variables().into_iter().collect(), AdamWConfig::default());
        let decays: Vec<(String, f64)> = opt.slots.iter().map(|s| (s.name.clone(), s.weight_decay)).collect();
        assert_eq!(decays, vec![("bias".to_string(), 0.0), ("w".to_string(), 0.01)]);
        let cosine = LrSchedule::Cosine { warmup_steps: 10, total_steps: 110, min_ratio: 0.1 };
        assert!((cosine.lr(1.0, 0) - 0.1).abs() < 1e-12);
        assert!((cosine.lr(1.0, 9) - 1.0).abs() < 1e-12);
        assert!((cosine.lr(1.0, 60) - 0.55).abs() < 1e-12);
        assert!((cosine.lr(1.0, 500) - 0.1).abs() < 1e-12);
        assert_eq!(LrSchedule::default().lr(5e-7, 3), 5e-7);
    }
}
