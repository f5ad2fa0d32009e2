//! The policy: a Dream-architecture masked-diffusion language model (a Qwen2 trunk with
//! bidirectional attention and shifted logits) on libtorch through tch, and what the RL update
//! needs from it.
//!
//! - [`config`]: [`ModelConfig`] from a Hugging Face `config.json` (+ `generation_config.json`).
//! - [`model`]: [`DreamModel`], its blocks and `forward`; [`head`]: the vocabulary head at chosen
//!   positions and chunked fp32 log-probabilities.
//! - [`checkpoint`]: safetensors in (memory-mapped, sharded) and out (Hugging Face layout).
//! - [`lora`]: adapters in PEFT's format, merge on save.
//! - [`kv_cache`]: the approximate key/value cache of Fast-dLLM decoding.
//! - [`tokenizer`]: [`ChatTokenizer`], the Qwen2.5 chat template, completion cutting.
//! - [`estimator`]: coupled masks, CART / 1/t token weights, [`ScoredBatch`] scoring;
//!   [`recompute`]: the memory-bounded backward (layer recomputation, chunked head).
//! - [`grpo`]: the clip-higher PPO token loss of coupled GRPO.
//! - [`optim`]: AdamW with fp32 moments and master weights whose state is saved; clipping; LR
//!   schedules.
//! - [`zero`]: AdamW across data-parallel ranks, replicated or ZeRO-2-sharded.
//! - [`device`]: which libtorch is loaded and what accelerators it sees (`dllm-rl doctor`).
//!
//! Shape letters used in comments throughout: B batch, G samples per prompt, P prompt length,
//! L total length, N scored positions, T denoising steps, V vocabulary, H hidden size,
//! D head dimension.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod estimator;
pub mod grpo;
pub mod head;
pub mod kv_cache;
pub mod lora;
pub mod model;
pub mod optim;
pub mod recompute;
pub mod tokenizer;
pub mod zero;

pub use checkpoint::SaveOptions;
pub use config::{ModelConfig, RopeScaling, SpecialTokens};
pub use device::{libtorch_info, matmul_throughput, AcceleratorReport, LibtorchInfo, MatmulTiming};
pub use error::{PolicyError, Result};
pub use estimator::{coupled_masks, mask_seed, token_weights, CoupledMasks, MaskSeeds, ScoredBatch, TokenWeighting, TokenWeights};
pub use kv_cache::KvCache;
pub use lora::{LoraConfig, ALL_PROJECTIONS};
pub use model::{DreamModel, Init, Pass, Placement};
pub use optim::{AdamW, AdamWConfig, LrSchedule};
pub use recompute::BackwardOptions;
pub use tokenizer::{chat_prompt, ChatMessage, ChatTokenizer};
pub use zero::{ParallelAdamW, ZeroAdamW};
