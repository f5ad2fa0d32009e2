//! The coupled-mask log-likelihood estimator of Dream-Coder's RL update
//! (`../shared/research/dllm_rl.md` §3).
//!
//! A diffusion LM has no exact sequence likelihood; the update scores each response token by
//! `log p(y_i | x_t)` with position i masked in the canvas `x_t`. Coupled sampling draws one
//! `t ~ U(0, 1)` and one uniform `u` per position: mask A = {response positions with u < t}
//! (noise level t), mask B = its complement within the response (noise level 1 - t). Together
//! the two passes score every response token exactly once.
//!
//! Token weights turn the per-token terms into the loss:
//! - [`TokenWeighting::InverseT`]: weight 1 on masked tokens, the loss term scaled by `1/t`;
//! - [`TokenWeighting::Cart`] (Dream-Coder's default, p = 0.1): a masked token i weighs
//!   `Σ_j ½ p (1-p)^{|i-j|-1}` over unmasked response positions j (more visible context nearby,
//!   more weight); no `1/t`.
//!
//! Randomness is explicit: masks come from a ChaCha8 stream seeded by the caller (derive seeds
//! with [`mask_seed`] from run, step and sample), never from libtorch's global generator, so a
//! step can be replayed exactly and on any device.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::error::{PolicyError, Result};
use crate::model::{DreamModel, Pass};

/// A seed for one (run, step, sample) triple; `sample = u64::MAX` may stand for "the batch".
pub fn mask_seed(run_seed: u64, step: u64, sample: u64) -> u64 {
    // SplitMix64 finaliser over a mix of the three: distinct inputs give unrelated streams.
    let mut z = run_seed ^ step.rotate_left(21) ^ sample.rotate_left(42) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which rows share a noise level and a position pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSeeds {
    /// One t and one pattern for the whole batch (what Dream-Coder does, per GPU).
    Shared(u64),
    /// Each row its own t and pattern.
    PerSample(Vec<u64>),
}

/// How masked tokens are weighted in the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenWeighting {
    /// Weight 1, loss term scaled by 1/t (the ELBO's weighting).
    InverseT,
    /// Context-adaptive reweighting with a geometric kernel of parameter `p`.
    Cart { p: f64 },
}

impl Default for TokenWeighting {
    fn default() -> Self {
        TokenWeighting::Cart { p: 0.1 }
    }
}

/// A complementary pair of masks over a batch.
#[derive(Debug)]
pub struct CoupledMasks {
    /// (B, L) bool: positions masked in the first pass.
    pub a: Tensor,
    /// (B, L) bool: the rest of the response, masked in the second pass.
    pub b: Tensor,
    /// (B,) fp32 noise level of pass A; pass B's is `1 - t`.
    pub t: Tensor,
}

impl CoupledMasks {
    /// The two passes as (mask, noise level): A at t, B at 1 - t.
    pub fn passes(&self) -> [(&Tensor, Tensor); 2] {
        [(&self.a, self.t.shallow_clone()), (&self.b, self.t.neg() + 1.0)]
    }
}

/// Uniform in the open interval (0, 1), 24 bits: t is never 0, so 1/t is finite.
fn open_uniform(rng: &mut ChaCha8Rng) -> f32 {
    ((rng.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
}

/// Draws the coupled masks for `response` (B, L) bool, the positions that may be masked.
pub fn coupled_masks(response: &Tensor, seeds: &MaskSeeds) -> Result<CoupledMasks> {
    let size = response.size();
    let (b, l) = match size.as_slice() {
        [b, l] => (*b, *l),
        _ => return Err(PolicyError::Invalid(format!("response mask must be (batch, length), got {size:?}"))),
    };
    let draw_row = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let t = open_uniform(&mut rng);
        let u: Vec<f32> = (0..l).map(|_| open_uniform(&mut rng)).collect();
        (t, u)
    };
    let (t, u): (Vec<f32>, Vec<f32>) = match seeds {
        MaskSeeds::Shared(seed) => {
            let (t, u) = draw_row(*seed);
            (vec![t; b as usize], u.repeat(b as usize))
        }
        MaskSeeds::PerSample(seeds) => {
            if seeds.len() != b as usize {
                return Err(PolicyError::Invalid(format!("{} mask seeds for a batch of {b}", seeds.len())));
            }
            let rows: Vec<(f32, Vec<f32>)> = seeds.iter().map(|s| draw_row(*s)).collect();
            (rows.iter().map(|r| r.0).collect(), rows.into_iter().flat_map(|r| r.1).collect())
        }
    };
    let device = response.device();
    let t = Tensor::from_slice(&t).to_device(device);
    let u = Tensor::from_slice(&u).view([b, l]).to_device(device);
    let response = response.to_kind(Kind::Bool);
    let below = u.lt_tensor(&t.unsqueeze(1));
    Ok(CoupledMasks { a: response.logical_and(&below), b: response.logical_and(&below.logical_not()), t })
}

/// The canvas a pass sees: `input_ids` with the masked positions replaced by the mask token.
pub fn masked_canvas(input_ids: &Tensor, mask: &Tensor, mask_token_id: i64) -> Tensor {
    input_ids.masked_fill(mask, mask_token_id)
}

/// Per-token weights of one pass, (B, L) fp32, zero outside the masked positions.
/// The loss is `Σ loss·ℓ_term / Σ norm` (Dream-Coder's token-mean: the 1/t factor scales the
/// terms but not the normaliser).
#[derive(Debug)]
pub struct TokenWeights {
    pub loss: Tensor,
    pub norm: Tensor,
}

/// Weights for the positions `masked` (B, L) of a pass at noise level `t` (B,), with `response`
/// (B, L) the positions that count as context for CART. With `no_loss_on`, tokens equal to that
/// id (the pad) weigh nothing.
pub fn token_weights(
    masked: &Tensor,
    response: &Tensor,
    t: &Tensor,
    weighting: TokenWeighting,
    targets: &Tensor,
    no_loss_on: Option<i64>,
) -> TokenWeights {
    let masked_f = masked.to_kind(Kind::Float);
    let mut norm = match weighting {
        TokenWeighting::InverseT => masked_f.shallow_clone(),
        TokenWeighting::Cart { p } => {
            let context = response.to_kind(Kind::Bool).logical_and(&masked.logical_not()).to_kind(Kind::Float);
            context.matmul(&cart_kernel(masked.size()[1], p, masked.device())) * &masked_f
        }
    };
    if let Some(pad) = no_loss_on {
        norm *= targets.ne(pad).to_kind(Kind::Float);
    }
    let loss = match weighting {
        TokenWeighting::InverseT => &norm / t.to_kind(Kind::Float).unsqueeze(1),
        TokenWeighting::Cart { .. } => norm.shallow_clone(),
    };
    TokenWeights { loss, norm }
}

/// K[i, j] = ½ p (1-p)^{|i-j|-1} for i ≠ j, 0 on the diagonal: (L, L) fp32.
fn cart_kernel(len: i64, p: f64, device: Device) -> Tensor {
    let idx = Tensor::arange(len, (Kind::Float, device));
    let distance = (idx.unsqueeze(1) - idx.unsqueeze(0)).abs();
    let kernel = ((distance.shallow_clone() - 1.0) * (1.0 - p).ln()).exp() * (0.5 * p);
    kernel.masked_fill(&distance.eq(0.0), 0.0)
}

/// What one scoring pass needs: the masked canvas, where to score, and the true tokens.
#[derive(Debug)]
pub struct ScoredBatch {
    /// (B, L) int64: the sequence with masked positions replaced by the mask token.
    pub canvas: Tensor,
    /// (B, L) bool: the positions scored (the masked response positions).
    pub positions: Tensor,
    /// (B, L) int64: the true tokens (only read at `positions`).
    pub targets: Tensor,
    /// (B, L) 0/1 padding mask, or `None` when the batch has no padding.
    pub attention: Option<Tensor>,
    /// The temperature the samples were drawn at: logits are divided by it before the
    /// log-softmax (verl's `logits.div_(temperature)`), so the log-probs are those of the
    /// distribution that sampled. 1 from [`ScoredBatch::new`].
    pub temperature: f64,
}

impl ScoredBatch {
    /// The pass that masks `mask` in `sequences`.
    pub fn new(model: &DreamModel, sequences: &Tensor, mask: &Tensor, attention: Option<&Tensor>) -> Result<Self> {
        let mask_id = model.config.mask_token_id()?;
        Ok(ScoredBatch {
            canvas: masked_canvas(sequences, mask, mask_id),
            positions: mask.to_kind(Kind::Bool),
            targets: sequences.shallow_clone(),
            attention: attention.map(|a| a.shallow_clone()),
            temperature: 1.0,
        })
    }

    /// The same pass scored at `temperature` (positive and finite).
    pub fn with_temperature(self, temperature: f64) -> Result<Self> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(PolicyError::Invalid(format!("a scoring temperature must be positive and finite, got {temperature}")));
        }
        Ok(ScoredBatch { temperature, ..self })
    }

    /// Per-position values (B, L) from the flat (N,) values of the scored positions.
    pub fn unflatten(&self, values: &Tensor) -> Tensor {
        self.positions.zeros_like().to_kind(values.kind()).masked_scatter(&self.positions, values)
    }

    /// Per-position values (B, L) → the flat (N,) order of the scored positions.
    pub fn flatten(&self, values: &Tensor) -> Tensor {
        values.masked_select(&self.positions)
    }
}

impl DreamModel {
    /// fp32 log-probabilities (N,) of the true tokens at the scored positions, with gradients
    /// when grad mode is on (old log-probs: call under `tch::no_grad`).
    pub fn score(&self, batch: &ScoredBatch, pass: Pass) -> Result<Tensor> {
        self.check_input(&batch.canvas)?;
        let hidden = self.forward(&batch.canvas, batch.attention.as_ref(), pass);
        Ok(self.token_logprobs(&hidden, &batch.positions, &batch.targets, batch.temperature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(b: i64, l: i64, prompt: i64) -> Tensor {
        Tensor::arange(l, (Kind::Int64, Device::Cpu)).ge(prompt).unsqueeze(0).repeat([b, 1])
    }

    #[test]
    fn masks_are_complements_within_the_response() {
        let r = response(3, 40, 8);
        let m = coupled_masks(&r, &MaskSeeds::PerSample(vec![1, 2, 3])).unwrap();
        let union = m.a.logical_or(&m.b);
        assert!(union.eq_tensor(&r).all().int64_value(&[]) == 1, "A ∪ B is the response");
        assert_eq!(m.a.logical_and(&m.b).sum(Kind::Int64).int64_value(&[]), 0, "A ∩ B is empty");
        assert_eq!(m.a.narrow(1, 0, 8).sum(Kind::Int64).int64_value(&[]), 0, "the prompt is never masked");
        // The fraction masked in A follows t.
        let t: Vec<f32> = Vec::try_from(&m.t).unwrap();
        assert!(t.iter().all(|&t| t > 0.0 && t < 1.0));
        assert!(t[0] != t[1], "per-sample draws differ");
        let [(_, ta), (_, tb)] = m.passes();
        assert!((ta + tb).allclose(&Tensor::ones([3], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
    }

    #[test]
    fn shared_seed_gives_one_pattern_and_replays() {
        let r = response(4, 64, 0);
        let m = coupled_masks(&r, &MaskSeeds::Shared(7)).unwrap();
        let first = m.a.get(0);
        for row in 1..4 {
            assert!(m.a.get(row).equal(&first));
        }
        let again = coupled_masks(&r, &MaskSeeds::Shared(7)).unwrap();
        assert!(again.a.equal(&m.a) && again.t.equal(&m.t));
        let other = coupled_masks(&r, &MaskSeeds::Shared(mask_seed(7, 1, 0))).unwrap();
        assert!(!other.a.equal(&m.a));
    }

    #[test]
    fn mask_fraction_matches_t_on_average() {
        let r = response(1, 4000, 0);
        for seed in 0..5 {
            let m = coupled_masks(&r, &MaskSeeds::Shared(seed)).unwrap();
            let t = m.t.double_value(&[0]);
            let frac = m.a.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            assert!((frac - t).abs() < 0.03, "seed {seed}: t {t}, masked fraction {frac}");
        }
    }

    #[test]
    fn cart_weights_match_the_definition() {
        // Response = positions 2..10 of 10; masked {3, 6, 7}; context = the other response positions.
        let l = 10;
        let r = response(1, l, 2);
        let masked = Tensor::from_slice(&[0i64, 0, 0, 1, 0, 0, 1, 1, 0, 0]).view([1, l]).to_kind(Kind::Bool);
        let targets = Tensor::arange(l, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let t = Tensor::from_slice(&[0.3f32]);
        let p = 0.1;
        let w = token_weights(&masked, &r, &t, TokenWeighting::Cart { p }, &targets, None);
        let context: Vec<i64> = (2..l).filter(|j| ![3, 6, 7].contains(j)).collect();
        for i in 0..l {
            let expected = if [3, 6, 7].contains(&i) {
                context.iter().map(|&j| 0.5 * p * (1.0 - p).powi(((i - j).abs() - 1) as i32)).sum::<f64>()
            } else {
                0.0
            };
            let got = w.norm.double_value(&[0, i]);
            assert!((got - expected).abs() < 1e-6, "position {i}: {got} vs {expected}");
        }
        assert!(w.loss.equal(&w.norm), "CART applies no 1/t");
        // Pads weigh nothing with no_loss_on.
        let w = token_weights(&masked, &r, &t, TokenWeighting::Cart { p }, &targets, Some(6));
        assert_eq!(w.norm.double_value(&[0, 6]), 0.0);
        assert!(w.norm.double_value(&[0, 7]) > 0.0);
    }

    #[test]
    fn inverse_t_scales_the_loss_but_not_the_normaliser() {
        let masked = Tensor::from_slice(&[1i64, 0, 1, 1]).view([2, 2]).to_kind(Kind::Bool);
        let r = masked.ones_like();
        let t = Tensor::from_slice(&[0.25f32, 0.5]);
        let targets = Tensor::zeros([2, 2], (Kind::Int64, Device::Cpu));
        let w = token_weights(&masked, &r, &t, TokenWeighting::InverseT, &targets, None);
        assert_eq!(Vec::<f32>::try_from(&w.norm.view([-1])).unwrap(), vec![1.0, 0.0, 1.0, 1.0]);
        assert_eq!(Vec::<f32>::try_from(&w.loss.view([-1])).unwrap(), vec![4.0, 0.0, 2.0, 2.0]);
    }
}
