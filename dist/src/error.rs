use thiserror::Error;

/// What can go wrong in a distributed run.
#[derive(Debug, Error)]
pub enum DistError {
    /// A launcher variable is malformed or inconsistent (named).
    #[error("{variable}={value:?}: {why}")]
    Environment { variable: &'static str, value: String, why: String },
    /// The store or the process group could not be set up.
    #[error("rank {rank} of {world_size}: could not join the process group at {address}: {message}")]
    Init { rank: usize, world_size: usize, address: String, message: String },
    /// A collective failed; `missing` names the ranks that never reached it, when the store could tell.
    #[error("rank {rank}: {operation} #{sequence} failed{}: {message}", missing_ranks(.missing))]
    Collective { rank: usize, operation: &'static str, sequence: i64, missing: Vec<usize>, message: String },
    /// Ranks disagree on something that must be equal everywhere.
    #[error("the ranks disagree: {0}")]
    Mismatch(String),
}

fn missing_ranks(missing: &[usize]) -> String {
    match missing {
        [] => String::new(),
        [one] => format!(" (rank {one} never reached it: it exited, hung or was killed)"),
        many => format!(" (ranks {} never reached it: they exited, hung or were killed)", many.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

pub type Result<T> = std::result::Result<T, DistError>;
