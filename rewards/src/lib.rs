//! Rewards: verifier verdicts → scalar rewards with reasons, group advantages, and the signals
//! of reward hacking. No libtorch.
//!
//! - [`reward`]: [`RewardConfig`] (pass_all, pass_fraction, format, overlong; weighted) →
//!   [`Reward`] with one reason per component.
//! - [`advantage`]: GRPO / Dr. GRPO / RLOO group advantages, solve statistics, and
//!   Dream-Coder's informative substitution.
//! - [`hacks`]: signals of attempts on the judge, for the audit.

pub mod advantage;
pub mod hacks;
pub mod reward;

pub use advantage::{group_advantages, informative_substitution, judged_group_advantages, AdvantageEstimator, SolveStats, Substitution};
pub use hacks::{backend_disagreement, code_signals, test_data_in_code, HackSignal};
pub use reward::{Judged, OverlongPenalty, Reward, RewardConfig, Unrewardable};
