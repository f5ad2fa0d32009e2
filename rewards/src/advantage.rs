//! Group advantages over the G samples of one prompt, group statistics, and Dream-Coder's
//! intra-batch informative substitution ("dynamic filtering").
//!
//! Estimators (names as in verl / TRL):
//! - `grpo`: `(r - mean) / (std + eps)`, std unbiased (n - 1), eps 1e-6: verl's GRPO, the
//!   Dream-Coder default. A group of one has mean 0 and std 1 (so A = r), as verl does.
//! - `dr_grpo`: `r - mean`, no std scaling (Dr. GRPO; TRL's `scale_rewards = false`).
//! - `rloo`: `r_i - mean_{j != i} r_j` (leave-one-out; DiffuCoder). A group of one gets 0.
//!
//! A group whose rewards are all equal has zero advantage everywhere: it teaches nothing.
//! Dream-Coder keeps the batch size by overwriting each such group with a copy of an informative
//! group drawn uniformly with replacement (`dllm_rl.md` §3.1, step 7).

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    Grpo,
    DrGrpo,
    Rloo,
}

pub const GRPO_EPS: f64 = 1e-6;

/// Advantages of one group's rewards.
pub fn group_advantages(rewards: &[f64], estimator: AdvantageEstimator) -> Vec<f64> {
    let n = rewards.len();
    if n == 0 {
        return Vec::new();
    }
    let sum: f64 = rewards.iter().sum();
    let mean = sum / n as f64;
    match estimator {
        AdvantageEstimator::Grpo => {
            let (mean, std) = if n == 1 {
                (0.0, 1.0)
            } else {
                let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                (mean, var.sqrt())
            };
            rewards.iter().map(|r| (r - mean) / (std + GRPO_EPS)).collect()
        }
        AdvantageEstimator::DrGrpo => rewards.iter().map(|r| r - mean).collect(),
        AdvantageEstimator::Rloo => {
            if n == 1 {
                return vec![0.0];
            }
            rewards.iter().map(|r| r - (sum - r) / (n - 1) as f64).collect()
        }
    }
}

/// Advantages of a group some of whose samples have no reward (`None`: the sandbox failed on
/// it, and again on the retry). Such a sample says nothing about the policy, and a stand-in
/// reward would not be neutral (a 0 gives an answer that may well be correct a negative
/// advantage, shifts the others', and makes a group of equal rewards look informative): the
/// statistics are those of the rewarded samples alone, and an unrewarded one gets 0 (the
/// trainer also leaves it out of the loss).
pub fn judged_group_advantages(rewards: &[Option<f64>], estimator: AdvantageEstimator) -> Vec<f64> {
    let judged: Vec<f64> = rewards.iter().flatten().copied().collect();
    let mut advantages = group_advantages(&judged, estimator).into_iter();
    rewards.iter().map(|r| if r.is_some() { advantages.next().unwrap_or(0.0) } else { 0.0 }).collect()
}

/// Whether a group can teach anything: its rewards are not all equal.
pub fn informative(rewards: &[f64]) -> bool {
    rewards.windows(2).any(|w| w[0] != w[1])
}

/// How the groups of a batch split by solves (a sample solves when it passed every test).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SolveStats {
    pub groups: usize,
    /// Fraction of groups where every sample solved.
    pub solve_all: f64,
    /// Fraction where none did.
    pub solve_none: f64,
    /// Fraction with some but not all.
    pub solve_partial: f64,
    /// Fraction of all samples that solved.
    pub solve_mean: f64,
}

impl SolveStats {
    /// From each group's per-sample solved flags.
    pub fn from_groups(groups: &[Vec<bool>]) -> Self {
        let n = groups.len();
        if n == 0 {
            return SolveStats::default();
        }
        let count = |f: &dyn Fn(&Vec<bool>) -> bool| groups.iter().filter(|g| f(g)).count() as f64 / n as f64;
        let samples: usize = groups.iter().map(Vec::len).sum();
        let solved: usize = groups.iter().map(|g| g.iter().filter(|&&s| s).count()).sum();
        SolveStats {
            groups: n,
            solve_all: count(&|g| !g.is_empty() && g.iter().all(|&s| s)),
            solve_none: count(&|g| g.iter().all(|&s| !s)),
            solve_partial: count(&|g| g.iter().any(|&s| s) && !g.iter().all(|&s| s)),
            solve_mean: if samples == 0 { 0.0 } else { solved as f64 / samples as f64 },
        }
    }
}

/// The outcome of informative substitution: for each group slot, the group whose samples fill
/// it (itself when informative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Substitution {
    pub source: Vec<usize>,
    /// Number of slots that were overwritten.
    pub replaced: usize,
    /// No group was informative: nothing could be substituted and the whole batch has zero
    /// advantage (Dream-Coder's code crashes here; a trainer should skip the update).
    pub no_informative_group: bool,
}

/// Dream-Coder's dynamic filtering: each group with equal rewards is replaced by a copy of an
/// informative group drawn uniformly with replacement from `seed`.
pub fn informative_substitution(groups: &[Vec<f64>], seed: u64) -> Substitution {
    let useful: Vec<usize> = (0..groups.len()).filter(|&g| informative(&groups[g])).collect();
    if useful.is_empty() {
        return Substitution { source: (0..groups.len()).collect(), replaced: 0, no_informative_group: !groups.is_empty() };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut replaced = 0;
    let source = (0..groups.len())
        .map(|g| {
            if informative(&groups[g]) {
                g
            } else {
                replaced += 1;
                useful[(rng.next_u64() % useful.len() as u64) as usize]
            }
        })
        .collect();
    Substitution { source, replaced, no_informative_group: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn grpo_by_hand() {
        // r = [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.57735.
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], AdvantageEstimator::Grpo);
        let s = (1.0f64 / 3.0).sqrt() + GRPO_EPS;
        assert!(close(&a, &[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]), "{a:?}");
        assert!(close(&group_advantages(&[1.0, 1.0, 1.0], AdvantageEstimator::Grpo), &[0.0, 0.0, 0.0]));
        assert!(close(&group_advantages(&[0.7], AdvantageEstimator::Grpo), &[0.7 / (1.0 + GRPO_EPS)]));
    }

    #[test]
    fn dr_grpo_and_rloo_by_hand() {
        let r = [1.0, 0.0, 0.0, 0.0];
        assert!(close(&group_advantages(&r, AdvantageEstimator::DrGrpo), &[0.75, -0.25, -0.25, -0.25]));
        // RLOO: 1 - 0 = 1; 0 - 1/3 for the others.
        assert!(close(&group_advantages(&r, AdvantageEstimator::Rloo), &[1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0]));
        assert!(close(&group_advantages(&[3.0], AdvantageEstimator::Rloo), &[0.0]));
    }

    #[test]
    fn unrewarded_samples_are_left_out_of_their_group() {
        // [1, ?, 0, 1]: the statistics of [1, 0, 1]; the unjudged sample gets 0.
        let a = judged_group_advantages(&[Some(1.0), None, Some(0.0), Some(1.0)], AdvantageEstimator::Grpo);
        let rest = group_advantages(&[1.0, 0.0, 1.0], AdvantageEstimator::Grpo);
        assert!(close(&a, &[rest[0], 0.0, rest[1], rest[2]]), "{a:?}");
        // All passing but one unjudged: nothing to learn, where a stand-in 0 would have made the
        // group informative and pushed the unjudged answer down.
        let a = judged_group_advantages(&[Some(1.0), None, Some(1.0)], AdvantageEstimator::DrGrpo);
        assert!(close(&a, &[0.0, 0.0, 0.0]));
        assert!(group_advantages(&[1.0, 0.0, 1.0], AdvantageEstimator::DrGrpo)[1] < 0.0);
        assert!(close(&judged_group_advantages(&[None, None], AdvantageEstimator::Rloo), &[0.0, 0.0]));
    }

    #[test]
    fn solve_statistics() {
        let s = SolveStats::from_groups(&[vec![true, true], vec![false, false], vec![true, false], vec![false, false]]);
        assert_eq!((s.solve_all, s.solve_none, s.solve_partial, s.solve_mean), (0.25, 0.5, 0.25, 3.0 / 8.0));
    }

    #[test]
    fn substitution_replaces_only_uninformative_groups_and_replays() {
        let groups = vec![vec![1.0, 1.0], vec![1.0, 0.0], vec![0.0, 0.0], vec![0.0, 1.0], vec![0.0, 0.0]];
        let s = informative_substitution(&groups, 9);
        assert_eq!(s.replaced, 3);
        assert_eq!((s.source[1], s.source[3]), (1, 3), "informative groups stay");
        for g in [0, 2, 4] {
            assert!([1, 3].contains(&s.source[g]), "slot {g} gets an informative group");
        }
        assert_eq!(informative_substitution(&groups, 9), s, "seeded");
        // Uniform with replacement: over many draws both informative groups appear.
        let many: Vec<Vec<f64>> = (0..200).map(|i| if i == 0 { vec![1.0, 0.0] } else if i == 1 { vec![0.0, 1.0] } else { vec![0.0, 0.0] }).collect();
        let s = informative_substitution(&many, 1);
        let ones = s.source[2..].iter().filter(|&&g| g == 1).count();
        assert!((70..130).contains(&ones), "{ones} of 198 drew group 1");
    }

    #[test]
    fn a_batch_without_information_is_flagged() {
        let s = informative_substitution(&[vec![0.0, 0.0], vec![1.0, 1.0]], 0);
        assert!(s.no_informative_group);
        assert_eq!(s.source, vec![0, 1]);
    }
}
