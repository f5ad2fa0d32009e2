//! The policy: a Dream-architecture (Qwen2 trunk, bidirectional attention) masked-diffusion
//! language model on libtorch through tch, and what the RL update needs from it.
//!
//! Today this crate holds [`device`]: what libtorch was loaded, which accelerators it sees and
//! how fast they multiply matrices (`dllm-rl doctor` prints it). The model, checkpoints, LoRA
//! and the coupled-mask estimator are the next issue's work.
//!
//! Shape letters used in comments throughout: B batch, G samples per prompt, P prompt length,
//! L total length, T denoising steps, V vocabulary, H hidden size, D head dimension.

pub mod device;

pub use device::{libtorch_info, matmul_throughput, AcceleratorReport, LibtorchInfo, MatmulTiming};
