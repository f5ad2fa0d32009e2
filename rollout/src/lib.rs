//! Rollout: diffusion samplers that turn prompts into completions with the policy.
//!
//! - [`config`]: [`SamplerConfig`] (Dream's and Fast-dLLM's settings, Dream-Coder's defaults).
//! - [`schedule`]: timesteps and tokens per step; [`proposal`]: Dream's `sample_tokens`
//!   (temperature, top-p, top-k, the three confidences); [`noise`]: explicit per-row randomness.
//! - [`sampler`]: [`sample`], the plain sampler and Fast-dLLM's block decoding (prefix and dual
//!   caches, threshold decoding) in one loop, for any batch, recording each token's step.
//! - [`batch`]: [`generate`], prompts x samples grouped into batches (length buckets or left
//!   padding), returning one [`Rollout`] per sample.
//! - [`order`]: the decode order rendered for a terminal or an HTML page.

pub mod batch;
pub mod config;
pub mod error;
pub mod noise;
pub mod order;
pub mod proposal;
pub mod sampler;
pub mod schedule;

pub use batch::{generate, Batching, Request, Rollout};
pub use config::{Alg, BlockConfig, CacheMode, Quota, SamplerConfig};
pub use error::{Result, RolloutError};
pub use noise::rollout_seed;
pub use sampler::{build_canvas, sample, Canvas, Decoded, SpecialIds};
