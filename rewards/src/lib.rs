//! Rewards: turn verifier verdicts into scalar rewards and GRPO group advantages.
//!
//! Not implemented yet (issue 6); this crate exists so that the workspace shows the pipeline.
