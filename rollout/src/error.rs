//! The rollout crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A sampler setting that cannot work; `key` as in the `[rollout.sampler]` TOML section
    /// (the command line maps it to its flag: `SamplerArgs::validate`).
    #[error("rollout.sampler.{key}: {reason}")]
    Config { key: String, reason: String },

    /// A request that cannot be sampled (empty prompt, too long for the model, ...).
    #[error("{0}")]
    Request(String),

    #[error(transparent)]
    Policy(#[from] dllm_policy::PolicyError),

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = RolloutError> = std::result::Result<T, E>;
