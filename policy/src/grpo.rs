//! The coupled-GRPO token loss (Dream-Coder's `dp_actor.py`, `../shared/research/dllm_rl.md`
//! §3.2): per scored token i of a row with advantage A,
//! `r = exp(ℓ - ℓ_old)`, `L = max(-A r, -A clip(r, 1 - ε_low, 1 + ε_high))`, weighted by the
//! token's loss weight and normalised by the sum of its normaliser weights over the whole
//! mini-batch (DAPO's token-mean; Dream-Coder's verl normalises each micro-batch by its own sum
//! and averages the micro-batches, a deviation the trainer documents). Every term depends on its
//! own token only, so the loss can be computed and back-propagated in chunks ([`crate::recompute`]).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Clip ranges, named as in verl (`clip_ratio_low`, `clip_ratio_high`; Dream-Coder 0.2 / 0.28).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipRange {
    pub low: f64,
    pub high: f64,
}

impl Default for ClipRange {
    fn default() -> Self {
        ClipRange { low: 0.2, high: 0.28 }
    }
}

/// Per-token PPO terms: the loss terms (unweighted) and whether the clipped branch was taken.
pub struct PpoTerms {
    pub loss: Tensor,
    pub clipped: Tensor,
    pub ratio: Tensor,
}

/// `logp`, `old_logp`, `advantages`: (n,) fp32, one entry per scored token.
pub fn ppo_terms(logp: &Tensor, old_logp: &Tensor, advantages: &Tensor, clip: ClipRange) -> PpoTerms {
    let ratio = (logp - old_logp).exp();
    let unclipped = -(advantages * &ratio);
    let clipped_ratio = ratio.clamp(1.0 - clip.low, 1.0 + clip.high);
    let clipped = -(advantages * &clipped_ratio);
    let took_clip = clipped.gt_tensor(&unclipped);
    PpoTerms { loss: unclipped.maximum(&clipped), clipped: took_clip, ratio }
}

/// The chunk's contribution to the mini-batch loss: `Σ w_loss · L / Σ_minibatch w_norm`.
/// Tokens of zero weight contribute nothing even when their term is infinite (0 · inf would be
/// NaN), and a zero normaliser (every weight zero: CART on a pass with no visible context) gives
/// zero, not 0/0: the floor is well above f32's smallest normal number, since the division
/// happens in the tensor's dtype.
pub fn weighted_loss(terms: &PpoTerms, loss_weights: &Tensor, normaliser: f64) -> Tensor {
    let live = terms.loss.where_self(&loss_weights.ne(0.0), &terms.loss.zeros_like());
    (live * loss_weights).sum(Kind::Float) / normaliser.max(1e-6)
}

/// k3, the low-variance KL estimate of KL(new ‖ ref) per token (Schulman; verl's `low_var_kl`):
/// `exp(ref - new) - (ref - new) - 1`, non-negative, clamped to [0, 10] as verl does so one
/// wild token cannot dominate.
pub fn k3(logp: &Tensor, ref_logp: &Tensor) -> Tensor {
    let d = (ref_logp - logp).clamp(-20.0, 20.0);
    (d.exp() - &d - 1.0).clamp(0.0, 10.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn k3_is_zero_at_the_reference_and_grows_both_ways() {
        let r = Tensor::from_slice(&[-1.0f32, -1.0, -1.0]);
        let v: Vec<f32> = Vec::try_from(&k3(&Tensor::from_slice(&[-1.0f32, -0.5, -2.0]), &r)).unwrap();
        assert_eq!(v[0], 0.0);
        assert!((v[1] - ((-0.5f32).exp() + 0.5 - 1.0)).abs() < 1e-6 && (v[2] - (1.0f32.exp() - 2.0)).abs() < 1e-6, "{v:?}");
    }

    use super::*;

    #[test]
    fn clip_higher_by_hand() {
        // Ratios 0.5, 1.0, 1.5 for a positive and a negative advantage.
        let logp = Tensor::from_slice(&[0.5f32.ln(), 0.0, 1.5f32.ln(), 0.5f32.ln(), 0.0, 1.5f32.ln()]);
        let old = Tensor::zeros([6], (Kind::Float, tch::Device::Cpu));
        let adv = Tensor::from_slice(&[1.0f32, 1.0, 1.0, -1.0, -1.0, -1.0]);
        let t = ppo_terms(&logp, &old, &adv, ClipRange::default());
        let loss: Vec<f32> = Vec::try_from(&t.loss).unwrap();
        // A > 0: max(-r, -clip(r)): r=0.5 → max(-0.5, -0.8) = -0.5; r=1.5 → max(-1.5, -1.28) = -1.28.
        // A < 0: max(r, clip(r)): r=0.5 → max(0.5, 0.8) = 0.8; r=1.5 → max(1.5, 1.28) = 1.5.
        let expected = [-0.5, -1.0, -1.28, 0.8, 1.0, 1.5];
        for (got, want) in loss.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{loss:?}");
        }
        let clipped: Vec<bool> = Vec::try_from(&t.clipped).unwrap();
        assert_eq!(clipped, [false, false, true, true, false, false]);
        let w = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0, 2.0, 0.0]);
        let l = weighted_loss(&t, &w, 4.0).double_value(&[]);
        assert!((l - (-0.5 - 1.0 - 1.28 + 2.0) / 4.0).abs() < 1e-5);
    }

    #[test]
    fn a_zero_weight_token_with_an_infinite_ratio_is_not_nan() {
        let lp = Tensor::from_slice(&[100.0f32, -1.0]);
        let old = Tensor::from_slice(&[-100.0f32, -1.0]);
        let t = ppo_terms(&lp, &old, &Tensor::from_slice(&[-1.0f32, 1.0]), ClipRange::default());
        let l = weighted_loss(&t, &Tensor::from_slice(&[0.0f32, 1.0]), 1.0).double_value(&[]);
        assert!((l + 1.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn an_all_zero_weight_batch_gives_zero_not_nan() {
        let lp = Tensor::from_slice(&[-1.0f32, -2.0]);
        let t = ppo_terms(&lp, &lp, &Tensor::from_slice(&[1.0f32, -1.0]), ClipRange::default());
        let l = weighted_loss(&t, &Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)), 0.0).double_value(&[]);
        assert_eq!(l, 0.0);
    }

    #[test]
    fn first_epoch_ratios_are_one_and_gradient_is_minus_advantage() {
        let logp = Tensor::from_slice(&[-1.0f32, -2.0]).set_requires_grad(true);
        let old = logp.detach();
        let adv = Tensor::from_slice(&[2.0f32, -1.0]);
        let t = ppo_terms(&logp, &old, &adv, ClipRange::default());
        weighted_loss(&t, &Tensor::ones([2], (Kind::Float, tch::Device::Cpu)), 2.0).backward();
        let g: Vec<f32> = Vec::try_from(&logp.grad()).unwrap();
        assert!((g[0] + 1.0).abs() < 1e-6 && (g[1] - 0.5).abs() < 1e-6, "{g:?}");
    }
}
