//! Rollout: diffusion samplers that turn prompts into completions with the policy (Dream's
//! `diffusion_generate`, Fast-dLLM block caching and threshold decoding), batched, seeded, and
//! recording the step at which each token was committed.
//!
//! Not implemented yet (issue 5); this crate exists so that the workspace shows the pipeline.
