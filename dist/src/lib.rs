//! Data parallel for dllm-rl on libtorch's own c10d, the engine under `torch.distributed`.
//!
//! A process learns its place from its launcher ([`Launch`]: torchrun's variables, else
//! SLURM's), joins a process group (Gloo for CPU tensors, NCCL for GPU ones) through a small C++
//! shim over `c10d::Backend`, and gets the collectives a trainer needs on tch tensors
//! ([`World`]). A single process has no engine at all: every collective is a no-op. A failed
//! collective is an error that names the ranks which never reached it, never a hang past the
//! time-out.

mod error;
mod group;
mod rendezvous;
mod world;

pub use error::{DistError, Result};
pub use group::{ProcessGroup, ReduceOp};
pub use rendezvous::{first_slurm_host, BackendKind, Launch, DEFAULT_PORT};
pub use world::{World, BUCKET_BYTES};
