//! Token proposals at masked positions: Dream's `sample_tokens`.
//!
//! logits / temperature → top-p (keep the smallest prefix of the sorted distribution whose mass
//! exceeds p, always the top token) → top-k → softmax → a token drawn by inverse CDF with the
//! position's uniform (argmax at temperature 0) → its confidence:
//! - `maskgit_plus`: the drawn token's probability;
//! - `topk_margin`: top-1 minus top-2 probability;
//! - `entropy`: Σ p log p (negative entropy: higher is more certain).
//!
//! All in fp32 over the filtered distribution, as the reference computes them. Inverse-CDF
//! sampling needs one uniform per position (from [`crate::noise`]), not one per vocabulary
//! entry, which is what makes the draws explicit and replayable. Rows are processed in chunks so
//! that a 152k vocabulary over thousands of positions never holds more than a few GB.

use tch::{Kind, Tensor};

use crate::config::Alg;

/// Tokens proposed at N positions and what the step orders them by.
#[derive(Debug)]
pub struct Proposal {
    /// (N,) int64.
    pub tokens: Tensor,
    /// (N,) fp32, by the sampler's algorithm (the probability for `origin`).
    pub confidence: Tensor,
    /// (N,) fp32: the proposed token's probability (what threshold decoding compares).
    pub probability: Tensor,
}

/// The filtering and drawing settings of [`propose`].
#[derive(Debug, Clone, Copy)]
pub struct Proposer {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: Option<i64>,
    pub alg: Alg,
}

/// Entries sorted when the top-p nucleus fits in them (see [`Proposer::sorted_head`]).
pub const NUCLEUS_HEAD: i64 = 1024;

/// Positions per chunk: about 512 M fp32 values per intermediate.
fn chunk_rows(vocab: i64) -> i64 {
    ((1i64 << 29) / vocab.max(1)).max(1)
}

impl Proposer {
    /// Proposes a token for each row of `logits` (N, V), using `uniforms` (N,) in (0, 1).
    pub fn propose(&self, logits: &Tensor, uniforms: &Tensor) -> Proposal {
        let (n, v) = (logits.size()[0], logits.size()[1]);
        let chunk = chunk_rows(v);
        if n <= chunk {
            return self.propose_chunk(logits, uniforms);
        }
        let parts: Vec<Proposal> =
            (0..n).step_by(chunk as usize).map(|s| self.propose_chunk(&logits.narrow(0, s, chunk.min(n - s)), &uniforms.narrow(0, s, chunk.min(n - s)))).collect();
        let cat = |f: fn(&Proposal) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
        Proposal { tokens: cat(|p| &p.tokens), confidence: cat(|p| &p.confidence), probability: cat(|p| &p.probability) }
    }

    fn propose_chunk(&self, logits: &Tensor, uniforms: &Tensor) -> Proposal {
        let mut scaled = logits.to_kind(Kind::Float);
        if self.temperature > 0.0 {
            scaled /= self.temperature;
        }
        let filtered = self.top_p < 1.0 || self.top_k.is_some();
        // Work in sorted order when filtering (top-p needs it); else in vocabulary order.
        let (values, order) = if filtered {
            let (sorted, order, normaliser) = self.sorted_head(&scaled);
            (self.filter_sorted(sorted, &normaliser), Some(order))
        } else {
            (scaled, None)
        };
        let probs = values.softmax(-1, Kind::Float);
        let index = if self.temperature > 0.0 {
            let cdf = probs.cumsum(-1, Kind::Float);
            let total = cdf.narrow(1, cdf.size()[1] - 1, 1);
            let targets = uniforms.unsqueeze(1).to_kind(Kind::Float) * &total;
            // The first entry whose cumulative mass exceeds the target: zero-probability entries
            // never raise the CDF, so they are never chosen.
            targets.searchsorted(&cdf, false, true, "right", None::<Tensor>).clamp_max(cdf.size()[1] - 1)
        } else if filtered {
            Tensor::zeros([probs.size()[0], 1], (Kind::Int64, probs.device()))
        } else {
            probs.argmax(-1, true)
        };
        let probability = probs.gather(1, &index, false).squeeze_dim(1);
        let tokens = match &order {
            Some(order) => order.gather(1, &index, false).squeeze_dim(1),
            None => index.squeeze_dim(1),
        };
        let confidence = match self.alg {
            Alg::Origin | Alg::MaskgitPlus => probability.shallow_clone(),
            Alg::TopkMargin => {
                let top2 = if filtered { probs.narrow(1, 0, 2.min(probs.size()[1])) } else { probs.topk(2.min(probs.size()[1]), -1, true, true).0 };
                if top2.size()[1] < 2 {
                    top2.squeeze_dim(1)
                } else {
                    top2.select(1, 0) - top2.select(1, 1)
                }
            }
            Alg::Entropy => (&probs * (&probs + 1e-10).log()).sum_dim_intlist(-1, false, Kind::Float),
        };
        Proposal { tokens, confidence, probability }
    }

    /// The logits in descending order with their vocabulary ids and each row's log-normaliser
    /// (logsumexp over the whole vocabulary). Sorting 152k entries per position is the costly
    /// part of a step, so only the largest [`NUCLEUS_HEAD`] (or top-k) are sorted when they
    /// provably hold everything the filters keep: top-k within them, or a top-p nucleus whose
    /// mass they already exceed in every row. Otherwise (flat distributions, as from random
    /// weights) the whole vocabulary is sorted. Both give identical results.
    fn sorted_head(&self, scaled: &Tensor) -> (Tensor, Tensor, Tensor) {
        let v = scaled.size()[1];
        let normaliser = scaled.logsumexp([-1], true);
        let head = self.top_k.unwrap_or(NUCLEUS_HEAD).min(v);
        if head < v {
            let (top, ids) = scaled.topk(head, -1, true, true);
            let covered = self.top_k.is_some() || {
                let mass = (&top - &normaliser).exp().sum_dim_intlist(-1, false, Kind::Float);
                mass.gt(self.top_p).all().int64_value(&[]) != 0
            };
            if covered {
                return (top, ids, normaliser);
            }
        }
        let (sorted, ids) = scaled.sort(-1, true);
        (sorted, ids, normaliser)
    }

    /// Top-p then top-k on logits sorted in descending order (a head of the vocabulary or all of
    /// it; `normaliser` is the full row's logsumexp): removed entries become -inf.
    fn filter_sorted(&self, sorted: Tensor, normaliser: &Tensor) -> Tensor {
        let (n, v) = (sorted.size()[0], sorted.size()[1]);
        let mut remove = Tensor::zeros([n, v], (Kind::Bool, sorted.device()));
        if self.top_p < 1.0 {
            let cumulative = (&sorted - normaliser).exp().cumsum(-1, Kind::Float);
            let over = cumulative.gt(self.top_p);
            // Shift right: the entry that crosses p is kept, and the top entry always.
            let first = Tensor::zeros([n, 1], (Kind::Bool, sorted.device()));
            remove = Tensor::cat(&[first, over.narrow(1, 0, v - 1)], 1);
        }
        if let Some(k) = self.top_k {
            let beyond = Tensor::arange(v, (Kind::Int64, sorted.device())).ge(k).unsqueeze(0);
            remove = remove.logical_or(&beyond);
        }
        sorted.masked_fill(&remove, f64::NEG_INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn logits(rows: &[&[f32]]) -> Tensor {
        let v = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, v])
    }

    fn greedy(alg: Alg) -> Proposer {
        Proposer { temperature: 0.0, top_p: 1.0, top_k: None, alg }
    }

    #[test]
    fn confidences_on_hand_made_logits() {
        // probs of row 0: softmax(ln [0.5, 0.3, 0.2]) = [0.5, 0.3, 0.2].
        let l = logits(&[&[0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()], &[0.0, 0.0, 0.0]]);
        let u = Tensor::from_slice(&[0.5f32, 0.5]);
        let p = greedy(Alg::MaskgitPlus).propose(&l, &u);
        assert_eq!(Vec::<i64>::try_from(&p.tokens).unwrap()[0], 0);
        assert!((p.confidence.double_value(&[0]) - 0.5).abs() < 1e-6);
        let p = greedy(Alg::TopkMargin).propose(&l, &u);
        assert!((p.confidence.double_value(&[0]) - 0.2).abs() < 1e-6);
        assert!(p.confidence.double_value(&[1]).abs() < 1e-6, "a flat row has no margin");
        let p = greedy(Alg::Entropy).propose(&l, &u);
        let expected: f64 = [0.5f64, 0.3, 0.2].iter().map(|p| p * p.ln()).sum();
        assert!((p.confidence.double_value(&[0]) - expected).abs() < 1e-5);
        assert!(p.confidence.double_value(&[0]) > p.confidence.double_value(&[1]), "peaked beats flat");
    }

    #[test]
    fn inverse_cdf_follows_the_uniform() {
        let l = logits(&[&[0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()]]);
        let sampler = Proposer { temperature: 1.0, top_p: 1.0, top_k: None, alg: Alg::MaskgitPlus };
        let pick = |u: f32| Vec::<i64>::try_from(&sampler.propose(&l, &Tensor::from_slice(&[u])).tokens).unwrap()[0];
        assert_eq!((pick(0.1), pick(0.49), pick(0.51), pick(0.79), pick(0.81), pick(0.999)), (0, 0, 1, 1, 2, 2));
    }

    #[test]
    fn top_p_keeps_the_crossing_token_and_top_k_cuts() {
        let l = logits(&[&[0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()]]);
        // p = 0.7: 0.5 < 0.7, 0.8 crosses → keep {0, 1}; renormalised 0.625 / 0.375.
        let sampler = Proposer { temperature: 1.0, top_p: 0.7, top_k: None, alg: Alg::MaskgitPlus };
        let p = sampler.propose(&l, &Tensor::from_slice(&[0.999f32]));
        assert_eq!(Vec::<i64>::try_from(&p.tokens).unwrap()[0], 1);
        assert!((p.probability.double_value(&[0]) - 0.375).abs() < 1e-5);
        let sampler = Proposer { temperature: 1.0, top_p: 1.0, top_k: Some(1), alg: Alg::MaskgitPlus };
        let p = sampler.propose(&l, &Tensor::from_slice(&[0.999f32]));
        assert_eq!(Vec::<i64>::try_from(&p.tokens).unwrap()[0], 0);
        assert!((p.probability.double_value(&[0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn empirical_frequencies_match_the_distribution() {
        let probs = [0.6f32, 0.25, 0.1, 0.05];
        let row: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let n = 20_000;
        let l = Tensor::from_slice(&row).view([1, 4]).repeat([n, 1]);
        let u = Tensor::rand([n], (Kind::Float, Device::Cpu)).clamp(1e-7, 1.0 - 1e-7);
        for top_p in [1.0, 0.999] {
            let sampler = Proposer { temperature: 1.0, top_p, top_k: None, alg: Alg::Entropy };
            let tokens = sampler.propose(&l, &u).tokens;
            for (t, p) in probs.iter().enumerate() {
                let freq = tokens.eq(t as i64).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                assert!((freq - *p as f64).abs() < 0.015, "top_p {top_p}: token {t}: {freq} vs {p}");
            }
        }
    }

    #[test]
    fn the_sorted_head_shortcut_changes_nothing() {
        // Peaked rows (the nucleus fits in the head) and flat rows (it does not), over a
        // vocabulary larger than the head.
        let v = 3000;
        let peaked = Tensor::randn([6, v], (Kind::Float, Device::Cpu)) * 8.0;
        let flat = Tensor::randn([6, v], (Kind::Float, Device::Cpu)) * 0.1;
        let u = Tensor::rand([6], (Kind::Float, Device::Cpu));
        for logits in [peaked, flat] {
            for (top_p, top_k) in [(0.95, None), (0.5, None), (1.0, Some(40)), (0.9, Some(2000))] {
                for alg in [Alg::Entropy, Alg::TopkMargin, Alg::MaskgitPlus] {
                    let fast = Proposer { temperature: 1.0, top_p, top_k, alg };
                    let got = fast.propose(&logits, &u);
                    // The reference: Dream's top_p_logits / top_k_logits over the full
                    // vocabulary, then softmax, inverse CDF in sorted order.
                    let (sorted, order) = logits.sort(-1, true);
                    let full = fast.filter_sorted(sorted.shallow_clone(), &sorted.logsumexp([-1], true));
                    let probs = full.softmax(-1, Kind::Float);
                    let cdf = probs.cumsum(-1, Kind::Float);
                    let idx = (u.unsqueeze(1) * cdf.narrow(1, v - 1, 1)).searchsorted(&cdf, false, true, "right", None::<Tensor>);
                    let tokens = order.gather(1, &idx, false).squeeze_dim(1);
                    assert!(got.tokens.equal(&tokens), "top_p {top_p} top_k {top_k:?}");
                    let p = probs.gather(1, &idx, false).squeeze_dim(1);
                    assert!(got.probability.allclose(&p, 1e-5, 1e-7, false));
                }
            }
        }
    }

    #[test]
    fn temperature_sharpens() {
        let l = logits(&[&[1.0, 0.0]]);
        let hot = Proposer { temperature: 2.0, top_p: 1.0, top_k: None, alg: Alg::MaskgitPlus };
        let cold = Proposer { temperature: 0.5, ..hot };
        let u = Tensor::from_slice(&[0.01f32]);
        assert!(cold.propose(&l, &u).probability.double_value(&[0]) > hot.propose(&l, &u).probability.double_value(&[0]));
    }
}
