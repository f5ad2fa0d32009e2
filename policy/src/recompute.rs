//! Backward passes that fit long sequences: activation recomputation and a chunked vocabulary
//! head (`../shared/research/rust_infra.md` §1.8).
//!
//! tch has no `torch.utils.checkpoint`, but `backward()` accumulates into every leaf's `.grad`,
//! so recomputation is done by hand:
//! 1. the trunk runs under `no_grad`, keeping only each layer's input (B, L, H);
//! 2. the hidden states at the scored positions become a leaf; the head and the objective run
//!    chunk by chunk, each chunk backpropagated at once (so only one chunk's fp32 logits exist);
//! 3. the accumulated gradient is pushed back through the final norm and then through each layer
//!    in reverse, recomputing that layer with grad and back-propagating the surrogate
//!    `Σ out · g`, whose gradient with respect to `out` is `g`.
//!
//! Parameter gradients come out exactly as from one ordinary backward (a test checks it).
//! LoRA dropout is replayed exactly: before each layer, in both passes, libtorch's generator is
//! re-seeded with the same per-layer seed. That generator is process-wide, so no other thread
//! may draw from it during a backward (model work runs on one thread per device anyway).

use tch::Tensor;

use crate::error::{PolicyError, Result};
use crate::estimator::ScoredBatch;
use crate::head::default_chunk;
use crate::model::{DreamModel, Pass};

/// How the update's backward pass trades compute for memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardOptions {
    /// Keep only layer inputs and recompute each layer during backward (~1 extra forward).
    pub recompute: bool,
    /// Scored positions per chunk of the vocabulary head; `None`: about 1 GiB of fp32 logits.
    pub head_chunk: Option<i64>,
}

impl Default for BackwardOptions {
    fn default() -> Self {
        BackwardOptions { recompute: true, head_chunk: None }
    }
}

impl DreamModel {
    fn dropout_active(&self, pass: Pass) -> bool {
        pass.train
            && pass.adapters
            && self.layers.iter().any(|l| l.linears().iter().any(|(_, lin)| lin.lora.as_ref().is_some_and(|a| a.dropout > 0.0)))
    }

    /// Scores `batch` and back-propagates `objective`, which maps a chunk of fp32 log-probs
    /// (n,) and the chunk's offset in the flat order of scored positions to a scalar loss. The
    /// loss must be a sum of per-token terms (the PPO token loss with fixed weights is), so that
    /// chunking changes nothing. Gradients accumulate into the trainable weights' `.grad`.
    /// Returns the detached log-probs (N,) and the summed loss.
    pub fn backward_scored(
        &self,
        batch: &ScoredBatch,
        pass: Pass,
        options: BackwardOptions,
        objective: &dyn Fn(&Tensor, i64) -> Tensor,
    ) -> Result<(Tensor, f64)> {
        self.backward_head(batch, pass, options, &|lp, _, start| objective(lp, start), false)
    }

    /// [`Self::backward_scored`] for objectives that also use each scored position's entropy
    /// of the predicted distribution (an entropy bonus): `objective(logprobs, entropies, offset)`.
    pub fn backward_scored_with_entropy(
        &self,
        batch: &ScoredBatch,
        pass: Pass,
        options: BackwardOptions,
        objective: &dyn Fn(&Tensor, &Tensor, i64) -> Tensor,
    ) -> Result<(Tensor, f64)> {
        self.backward_head(batch, pass, options, &|lp, entropy, start| objective(lp, entropy.unwrap_or(lp), start), true)
    }

    fn backward_head(
        &self,
        batch: &ScoredBatch,
        pass: Pass,
        options: BackwardOptions,
        objective: &dyn Fn(&Tensor, Option<&Tensor>, i64) -> Tensor,
        entropy: bool,
    ) -> Result<(Tensor, f64)> {
        self.check_input(&batch.canvas)?;
        let ids = &batch.canvas;
        let rope = self.rotary.tables(ids.size()[1], self.placement.compute_kind);
        let mask = Self::attention_mask(batch.attention.as_ref());
        // Per-layer seeds so that dropout draws the same masks when a layer is recomputed.
        let seeds: Option<Vec<i64>> = self.dropout_active(pass).then(|| {
            let base = Tensor::randint(i64::MAX / 2, [1], (tch::Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
            (0..self.layers.len() as i64).map(|i| base + i).collect()
        });
        let seed_layer = |i: usize| {
            if let Some(seeds) = &seeds {
                tch::manual_seed(seeds[i]);
            }
        };

        // 1. The trunk: with recompute, under no_grad keeping each layer's input.
        let mut inputs = Vec::new();
        let trunk_out = if options.recompute {
            let _guard = tch::no_grad_guard();
            let mut x = self.embed(ids);
            for (i, layer) in self.layers.iter().enumerate() {
                seed_layer(i);
                let next = layer.forward(&x, &rope, mask.as_ref(), pass);
                inputs.push(std::mem::replace(&mut x, next));
            }
            x
        } else {
            let mut x = self.embed(ids);
            for (i, layer) in self.layers.iter().enumerate() {
                seed_layer(i);
                x = layer.forward(&x, &rope, mask.as_ref(), pass);
            }
            x
        };
        let trunk_leaf = if options.recompute { trunk_out.detach().set_requires_grad(true) } else { trunk_out };
        let hidden = self.norm.forward(&trunk_leaf);
        let selected = self.hidden_at(&hidden, &batch.positions);
        let targets = batch.targets.masked_select(&batch.positions);

        // 2. The head, chunk by chunk, each chunk's graph freed by its own backward.
        let head_leaf = selected.detach().set_requires_grad(true);
        let n = head_leaf.size()[0];
        let chunk = options.head_chunk.unwrap_or_else(|| default_chunk(self.config.vocab_size)).max(1);
        let mut logprobs = Vec::new();
        let mut total = 0.0;
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let (h, t) = (head_leaf.narrow(0, start, len), targets.narrow(0, start, len));
            let (lp, ent) = if entropy {
                let (lp, ent) = self.target_logprobs_and_entropy(&h, &t, batch.temperature);
                (lp, Some(ent))
            } else {
                (self.target_logprobs(&h, &t, len, batch.temperature), None)
            };
            let loss = objective(&lp, ent.as_ref(), start);
            if loss.numel() != 1 {
                return Err(PolicyError::Invalid(format!("the objective must return a scalar, got {:?}", loss.size())));
            }
            total += loss.double_value(&[]);
            if loss.requires_grad() {
                loss.backward();
            }
            logprobs.push(lp.detach());
        }
        let logprobs = if logprobs.is_empty() { Tensor::zeros([0], (tch::Kind::Float, ids.device())) } else { Tensor::cat(&logprobs, 0) };
        let mut grad = head_leaf.grad();

        // 3. Back through the final norm and the trunk.
        if !grad.defined() || !selected.requires_grad() {
            return Ok((logprobs, total));
        }
        surrogate_backward(&selected, &grad);
        if !options.recompute {
            return Ok((logprobs, total));
        }
        grad = trunk_leaf.grad();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let input = inputs[i].detach().set_requires_grad(true);
            seed_layer(i);
            let out = layer.forward(&input, &rope, mask.as_ref(), pass);
            if out.requires_grad() {
                surrogate_backward(&out, &grad);
            }
            grad = input.grad();
            drop(out);
            if !grad.defined() {
                return Ok((logprobs, total));
            }
        }
        if self.embed_tokens.requires_grad() {
            surrogate_backward(&self.embed(ids), &grad);
        }
        Ok((logprobs, total))
    }
}

/// Back-propagates `grad` (the gradient of the loss with respect to `out`) into everything
/// `out` depends on: the gradient of `Σ out · grad` with respect to `out` is `grad`.
fn surrogate_backward(out: &Tensor, grad: &Tensor) {
    (out * grad.to_kind(out.kind())).sum(out.kind()).backward();
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::estimator::{coupled_masks, MaskSeeds, ScoredBatch};
    use crate::lora::LoraConfig;
    use crate::model::testing::tiny_model;
    use crate::model::{DreamModel, Pass};

    use super::BackwardOptions;

    fn trainable(model: &DreamModel) -> Vec<Tensor> {
        match &model.lora {
            Some(lora) => lora.vs.trainable_variables(),
            None => model.vs.trainable_variables(),
        }
    }

    fn take_grads(model: &DreamModel) -> Vec<Tensor> {
        trainable(model)
            .iter()
            .map(|v| {
                let g = v.grad();
                let copy = if g.defined() { g.copy() } else { v.zeros_like() };
                if g.defined() {
                    let _ = g.detach().zero_();
                }
                copy
            })
            .collect()
    }

    #[test]
    fn recompute_and_chunking_give_the_plain_gradients() {
        for (lora, padded) in [(false, false), (true, false), (true, true)] {
            let mut model = tiny_model(false, 3);
            if lora {
                let config = LoraConfig { r: 2, lora_alpha: 4.0, ..LoraConfig::default() };
                model.attach_lora(config, 5).unwrap();
                // Fresh adapters have B = 0, which leaves A without gradient; make both live.
                let _guard = tch::no_grad_guard();
                for v in trainable(&model) {
                    let _ = v.detach().normal_(0.0, 0.1);
                }
            }
            tch::manual_seed(11);
            let ids = Tensor::randint_low(1, 39, [3, 10], (Kind::Int64, Device::Cpu));
            let response = Tensor::arange(10, (Kind::Int64, Device::Cpu)).ge(4).unsqueeze(0).repeat([3, 1]);
            let attention = padded.then(|| {
                let a = Tensor::ones([3, 10], (Kind::Int64, Device::Cpu));
                let _ = a.get(1).narrow(0, 0, 2).fill_(0);
                a
            });
            let masks = coupled_masks(&response, &MaskSeeds::PerSample(vec![1, 2, 3])).unwrap();
            let batch = ScoredBatch::new(&model, &ids, &masks.a, attention.as_ref()).unwrap();
            let n = batch.positions.sum(Kind::Int64).int64_value(&[]);
            let advantages = Tensor::randn([n], (Kind::Float, Device::Cpu));
            let objective = |lp: &Tensor, start: i64| (lp * advantages.narrow(0, start, lp.size()[0])).sum(Kind::Float);

            let lp = model.score(&batch, Pass::TRAIN).unwrap();
            let plain_loss = objective(&lp, 0);
            plain_loss.backward();
            let plain = take_grads(&model);

            let options = BackwardOptions { recompute: true, head_chunk: Some(3) };
            let (lp2, loss) = model.backward_scored(&batch, Pass::TRAIN, options, &objective).unwrap();
            let recomputed = take_grads(&model);

            assert!((loss - plain_loss.double_value(&[])).abs() < 1e-4, "loss {loss} vs {plain_loss}");
            assert!(lp2.allclose(&lp.detach(), 1e-5, 1e-6, false));
            let nonzero = plain.iter().filter(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0).count();
            assert!(nonzero >= plain.len() / 2, "lora {lora}: only {nonzero} of {} gradients are live", plain.len());
            for (a, b) in plain.iter().zip(&recomputed) {
                assert!(a.allclose(b, 1e-4, 1e-6, false), "lora {lora} padded {padded}: gradients differ by {}", (a - b).abs().max());
            }
        }
    }

    #[test]
    fn the_backward_scores_at_the_batchs_temperature() {
        let model = tiny_model(false, 3);
        tch::manual_seed(13);
        let ids = Tensor::randint_low(1, 39, [2, 10], (Kind::Int64, Device::Cpu));
        let response = Tensor::arange(10, (Kind::Int64, Device::Cpu)).ge(4).unsqueeze(0).repeat([2, 1]);
        let masks = coupled_masks(&response, &MaskSeeds::PerSample(vec![6, 7])).unwrap();
        let cold = ScoredBatch::new(&model, &ids, &masks.a, None).unwrap();
        let plain = tch::no_grad(|| model.score(&cold, Pass::EVAL)).unwrap();
        let hot = ScoredBatch::new(&model, &ids, &masks.a, None).unwrap().with_temperature(1.5).unwrap();
        let scored = tch::no_grad(|| model.score(&hot, Pass::EVAL)).unwrap();
        let options = BackwardOptions { recompute: true, head_chunk: Some(3) };
        let objective = |lp: &Tensor, _: i64| lp.sum(Kind::Float);
        let (trained, _) = model.backward_scored(&hot, Pass::EVAL, options, &objective).unwrap();
        let entropy_objective = |lp: &Tensor, e: &Tensor, _: i64| lp.sum(Kind::Float) - e.sum(Kind::Float);
        let (with_entropy, _) = model.backward_scored_with_entropy(&hot, Pass::EVAL, options, &entropy_objective).unwrap();
        // Old and new log-probs of one pass agree at the rollout's temperature, and it matters.
        assert!(trained.allclose(&scored, 1e-5, 1e-6, false) && with_entropy.allclose(&scored, 1e-5, 1e-6, false));
        assert!(!scored.allclose(&plain, 1e-3, 1e-3, false));
        let at_one = ScoredBatch::new(&model, &ids, &masks.a, None).unwrap().with_temperature(1.0).unwrap();
        assert!(tch::no_grad(|| model.score(&at_one, Pass::EVAL)).unwrap().equal(&plain), "T = 1 changes nothing");
        assert!(ScoredBatch::new(&model, &ids, &masks.a, None).unwrap().with_temperature(0.0).is_err());
    }

    #[test]
    fn an_entropy_term_gets_the_plain_gradients_too() {
        let model = tiny_model(false, 3);
        tch::manual_seed(12);
        let ids = Tensor::randint_low(1, 39, [2, 10], (Kind::Int64, Device::Cpu));
        let response = Tensor::arange(10, (Kind::Int64, Device::Cpu)).ge(4).unsqueeze(0).repeat([2, 1]);
        let masks = coupled_masks(&response, &MaskSeeds::PerSample(vec![4, 5])).unwrap();
        let batch = ScoredBatch::new(&model, &ids, &masks.a, None).unwrap();
        // Plain autograd: entropy of the full softmax at the scored positions.
        let hidden = model.forward(&batch.canvas, batch.attention.as_ref(), Pass::TRAIN);
        let logits = model.logits_at(&hidden, &batch.positions).to_kind(Kind::Float);
        let log_p = logits.log_softmax(-1, Kind::Float);
        let plain_entropy = -(log_p.exp() * &log_p).sum(Kind::Float);
        let lp = model.score(&batch, Pass::TRAIN).unwrap();
        let plain_loss = lp.sum(Kind::Float) * 0.5 - &plain_entropy;
        plain_loss.backward();
        let plain = take_grads(&model);

        let objective = |lp: &Tensor, entropy: &Tensor, _: i64| lp.sum(Kind::Float) * 0.5 - entropy.sum(Kind::Float);
        let options = BackwardOptions { recompute: true, head_chunk: Some(4) };
        let (_, loss) = model.backward_scored_with_entropy(&batch, Pass::TRAIN, options, &objective).unwrap();
        let chunked = take_grads(&model);
        assert!((loss - plain_loss.double_value(&[])).abs() < 1e-3, "loss {loss} vs {plain_loss}");
        for (a, b) in plain.iter().zip(&chunked) {
            assert!(a.allclose(b, 1e-4, 1e-5, false), "gradients differ by {}", (a - b).abs().max());
        }
    }
}
