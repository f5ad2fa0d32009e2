//! The vocabulary head, computed only where it is needed.
//!
//! A 152k-word head over every position of a 16 x 1,280 batch is 3 G floats; the sampler needs
//! it at masked positions only and the estimator at scored response positions only. Positions
//! are given as a (B, L) bool tensor; results come back as (N, ...) rows in row-major order of
//! the true entries. The logit shift lives here: with `logit_shift`, the token at position i is
//! read from the hidden state at i-1 (position 0 from itself, as Dream's
//! `cat([logits[:, :1], logits[:, :-1]])` does).

use tch::{Kind, Tensor};

use crate::model::DreamModel;

/// Positions per chunk of the log-probability computation, so that one chunk's fp32 logits stay
/// near 256 M floats (1 GiB) whatever the vocabulary.
pub fn default_chunk(vocab: i64) -> i64 {
    ((1i64 << 28) / vocab.max(1)).max(1)
}

impl DreamModel {
    /// Hidden states that predict the tokens at `positions`: (N, H).
    pub fn hidden_at(&self, hidden: &Tensor, positions: &Tensor) -> Tensor {
        let idx = positions.nonzero(); // (N, 2): row, column
        let rows = idx.select(1, 0);
        let cols = idx.select(1, 1);
        let source = if self.config.logit_shift { (cols - 1).clamp_min(0) } else { cols };
        hidden.index(&[Some(rows), Some(source)])
    }

    /// Logits (N, V) in the compute dtype for the tokens at `positions`.
    pub fn logits_at(&self, hidden: &Tensor, positions: &Tensor) -> Tensor {
        self.project(&self.hidden_at(hidden, positions))
    }

    /// The head itself: (N, H) → (N, V).
    pub fn project(&self, h: &Tensor) -> Tensor {
        h.linear(&self.lm_head.to_kind(h.kind()), None::<Tensor>)
    }

    /// Shifted logits at every position, (B, L, V): for tests and small models only.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let logits = self.project(hidden);
        if self.config.logit_shift && logits.size()[1] > 1 {
            let l = logits.size()[1];
            Tensor::cat(&[logits.narrow(1, 0, 1), logits.narrow(1, 0, l - 1)], 1)
        } else {
            logits
        }
    }

    /// fp32 logits of the head over `h` (N, H), divided by the sampling `temperature`. verl
    /// divides the logits by the rollout temperature before every log-softmax (old, new and
    /// reference log-probs), so that the ratio compares the distribution the samples were drawn
    /// from; at 1 nothing is divided, so the result is bit for bit the plain head's.
    fn tempered_logits(&self, h: &Tensor, temperature: f64) -> Tensor {
        let logits = self.project(h).to_kind(Kind::Float);
        if temperature == 1.0 {
            logits
        } else {
            logits / temperature
        }
    }

    /// fp32 log-probabilities (N,) of `targets` (N,) under the head applied to `h` (N, H) at
    /// `temperature`, `chunk` rows at a time: never more than `chunk x V` fp32 logits exist at
    /// once (under autograd each chunk's logits are kept for backward; see [`crate::recompute`]
    /// for the path that frees them).
    pub fn target_logprobs(&self, h: &Tensor, targets: &Tensor, chunk: i64, temperature: f64) -> Tensor {
        let n = h.size()[0];
        if n == 0 {
            return Tensor::zeros([0], (Kind::Float, h.device()));
        }
        let pieces: Vec<Tensor> = (0..n)
            .step_by(chunk.max(1) as usize)
            .map(|start| {
                let len = chunk.min(n - start);
                let logits = self.tempered_logits(&h.narrow(0, start, len), temperature);
                let picked = logits.gather(1, &targets.narrow(0, start, len).unsqueeze(1), false).squeeze_dim(1);
                picked - logits.logsumexp([1], false)
            })
            .collect();
        Tensor::cat(&pieces, 0)
    }

    /// [`Self::target_logprobs`] in one chunk, with each row's entropy of the whole predicted
    /// distribution (N,) at that temperature, in fp32: for an entropy term in the loss.
    pub fn target_logprobs_and_entropy(&self, h: &Tensor, targets: &Tensor, temperature: f64) -> (Tensor, Tensor) {
        let logits = self.tempered_logits(h, temperature);
        let log_z = logits.logsumexp([1], true);
        let log_p = &logits - &log_z;
        let picked = log_p.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
        let entropy = -(log_p.exp() * &log_p).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        (picked, entropy)
    }

    /// fp32 log-probabilities (N,) of `targets` (B, L) at `positions` (B, L bool), given
    /// `hidden` from a forward over the (masked) canvas, at `temperature`.
    pub fn token_logprobs(&self, hidden: &Tensor, positions: &Tensor, targets: &Tensor, temperature: f64) -> Tensor {
        let h = self.hidden_at(hidden, positions);
        let t = targets.masked_select(positions);
        self.target_logprobs(&h, &t, default_chunk(self.config.vocab_size), temperature)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::model::testing::tiny_model;
    use crate::model::Pass;

    #[test]
    fn head_at_positions_equals_the_full_shifted_head() {
        for shift in [true, false] {
            let mut model = tiny_model(shift, 1);
            model.config.logit_shift = shift;
            let ids = Tensor::randint_low(1, 39, [2, 9], (Kind::Int64, Device::Cpu));
            let hidden = tch::no_grad(|| model.forward(&ids, None, Pass::EVAL));
            let full = model.logits(&hidden); // (B, L, V)
            let positions = Tensor::rand([2, 9], (Kind::Float, Device::Cpu)).lt(0.5);
            let _ = positions.get(0).get(0).fill_(1); // position 0 reads its own hidden state
            let at = model.logits_at(&hidden, &positions);
            let expected = full.index(&[Some(positions.shallow_clone())]);
            assert!(at.allclose(&expected, 1e-6, 1e-6, false));
            if shift {
                assert!(full.get(0).get(3).allclose(&model.project(&hidden.get(0).get(2)), 1e-6, 1e-6, false));
            }

            let targets = Tensor::randint_low(0, 40, [2, 9], (Kind::Int64, Device::Cpu));
            let lp = model.token_logprobs(&hidden, &positions, &targets, 1.0);
            let reference = full
                .log_softmax(-1, Kind::Float)
                .gather(2, &targets.unsqueeze(2), false)
                .squeeze_dim(2)
                .masked_select(&positions);
            assert!(lp.allclose(&reference, 1e-5, 1e-6, false));
            // Chunking changes nothing.
            let h = model.hidden_at(&hidden, &positions);
            let t = targets.masked_select(&positions);
            assert!(model.target_logprobs(&h, &t, 1, 1.0).allclose(&lp, 1e-6, 1e-6, false));
            // At a temperature, the log-softmax of logits / T.
            let hot = model.token_logprobs(&hidden, &positions, &targets, 2.0);
            let reference = (full / 2.0)
                .log_softmax(-1, Kind::Float)
                .gather(2, &targets.unsqueeze(2), false)
                .squeeze_dim(2)
                .masked_select(&positions);
            assert!(hot.allclose(&reference, 1e-5, 1e-6, false));
            assert!(!hot.allclose(&lp, 1e-3, 1e-3, false), "the temperature changes the log-probs");
        }
    }
}
