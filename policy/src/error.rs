//! The one error type of this crate: every variant names the file and, where there is one, the
//! key or tensor that was wrong.

use std::path::PathBuf;

/// A cause that is the error's `source` is left out of its message: `dllm-rl` prints the chain
/// (`{:#}`), which would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: not valid JSON")]
    Json { path: PathBuf, source: serde_json::Error },

    /// A configuration value that is missing, malformed or not supported.
    #[error("{path}: `{key}`: {reason}")]
    Config { path: PathBuf, key: String, reason: String },

    /// Tensor names or shapes in a checkpoint that do not fit the model.
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// An argument from the caller that cannot work (shapes, ranges, options).
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Torch(#[from] tch::TchError),

    /// A collective of the sharded optimizer failed.
    #[error(transparent)]
    Dist(#[from] dllm_dist::DistError),
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PolicyError {
    let path = path.into();
    move |source| PolicyError::Io { path, source }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|source| PolicyError::Json { path: path.into(), source })
}
