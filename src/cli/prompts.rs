//! Arguments of `dllm-rl prompts …`.

use clap::{Args, Subcommand};

use super::{parse_fraction, parse_positive, BackendArg};

#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Convert dataset files into canonical task JSONL. Bad rows are reported with file, row
    /// and field, then skipped (or fatal with --strict).
    Import(ImportArgs),
    /// Run each task's reference solution against its own tests in the sandbox; drop (or flag)
    /// broken tasks and tasks with too few tests.
    Validate(ValidateArgs),
    /// Drop exact and near-duplicate prompts (MinHash-LSH over word shingles, Jaccard checked).
    Dedupe(DedupeArgs),
    /// Drop tasks sharing an n-gram with evaluation problems.
    Decontaminate(DecontaminateArgs),
    /// Keep tasks whose pass rate (from `dllm-rl eval --per-task`) lies in a range.
    Difficulty(DifficultyArgs),
    /// Keep tasks released within a date window (LiveCodeBench's contamination-free splits).
    ///
    /// Dates are days, YYYY-MM-DD, as LiveCodeBench's --start_date/--end_date; both ends are
    /// included. A task's date is its `released` field, which `prompts import --format
    /// livecodebench` fills from `contest_date`.
    Window(WindowArgs),
    /// Sample to target proportions by source or kind (seeded).
    Mix(MixArgs),
    /// Split into parts by hashing task ids (seeded, stable).
    Split(SplitArgs),
    /// Counts by source, kind, number of tests, prompt length, and pass rate when known.
    Stats(StatsArgs),
}

/// What every curation step reads and writes. The manifest (one decision per task: kept or
/// dropped, why, numbers) is written beside OUT as `<OUT stem>.manifest.jsonl`.
#[derive(Debug, Args)]
pub struct CurateIo {
    /// The tasks kept (canonical task JSONL).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Canonical task JSONL files (optionally .gz), read in order.
    #[arg(required = true)]
    pub inputs: Vec<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Fewest tests a task may have. DeepCoder kept tasks with 5 or more (fewer let wrong
    /// solutions through); the default is 1 because MBPP has 3 tests a task and CRUXEval 1, and a
    /// higher default would drop whole standard sets.
    #[arg(long, default_value_t = 1)]
    pub min_tests: usize,
    /// Keep tasks without a reference solution (flagged) instead of dropping them.
    #[arg(long)]
    pub keep_unverified: bool,
    /// Keep failing tasks, flagged in the manifest, instead of dropping them.
    #[arg(long)]
    pub flag_only: bool,
    /// Sandbox that runs the references: native (fast) or wasm (no host access at all).
    #[arg(long, value_enum, default_value_t = BackendArg::Native)]
    pub backend: BackendArg,
    /// Concurrent sandbox runs (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub io: CurateIo,
}

#[derive(Debug, Args)]
pub struct DedupeArgs {
    /// Jaccard similarity of word shingles at or above which prompts are duplicates.
    #[arg(long, default_value_t = 0.8)]
    pub threshold: f64,
    /// Words per shingle.
    #[arg(long, default_value_t = 5, value_parser = parse_positive::<usize>)]
    pub shingle: usize,
    #[command(flatten)]
    pub io: CurateIo,
}

#[derive(Debug, Args)]
pub struct DecontaminateArgs {
    /// Evaluation problems: canonical tasks or any JSONL/JSON with a `prompt` (or `question`,
    /// `content`, `problem`, `text`) field; or any importable format with --against-format.
    #[arg(long, required = true)]
    pub against: Vec<std::path::PathBuf>,
    /// Read the --against files as this importable format instead of as plain text fields.
    #[arg(long, value_enum)]
    pub against_format: Option<FormatArg>,
    /// Words per n-gram.
    #[arg(long, default_value_t = 13)]
    pub ngram: usize,
    /// Shared n-grams that make a task contaminated.
    #[arg(long, default_value_t = 1)]
    pub min_overlap: usize,
    /// n-grams found in more evaluation texts (distinct wordings) or more training prompts than
    /// this are boilerplate and ignored; a verbatim copy of an evaluation problem is always caught.
    #[arg(long, default_value_t = 3)]
    pub common: usize,
    #[command(flatten)]
    pub io: CurateIo,
}

#[derive(Debug, Args)]
pub struct DifficultyArgs {
    /// Per-task pass rates written by `dllm-rl eval --per-task`.
    #[arg(long)]
    pub rates: std::path::PathBuf,
    /// Lowest pass rate kept, in [0, 1] (the default keeps what the model never solves; any
    /// value above 0 drops it).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction, allow_negative_numbers = true)]
    pub min: f64,
    /// Highest pass rate kept, in [0, 1] (the default drops what the model always solves).
    #[arg(long, default_value_t = 0.999, value_parser = parse_fraction, allow_negative_numbers = true)]
    pub max: f64,
    /// Keep tasks with no pass rate (flagged).
    #[arg(long)]
    pub keep_unrated: bool,
    #[command(flatten)]
    pub io: CurateIo,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("bounds").required(true).multiple(true).args(["start_date", "end_date"]))]
pub struct WindowArgs {
    /// First release day kept (e.g. the day after a model's training cut-off).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub start_date: Option<dllm_verifier::ReleaseDate>,
    /// Last release day kept.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub end_date: Option<dllm_verifier::ReleaseDate>,
    /// Keep tasks with no release date (flagged) instead of dropping them.
    #[arg(long)]
    pub keep_undated: bool,
    #[command(flatten)]
    pub io: CurateIo,
}

/// What `prompts mix` groups by.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MixKeyArg {
    Source,
    Kind,
    SourceKind,
}

#[derive(Debug, Args)]
pub struct MixArgs {
    /// What the target proportions are of: sources, kinds, or both.
    #[arg(long, value_enum, default_value_t = MixKeyArg::Source)]
    pub by: MixKeyArg,
    /// Target proportions, e.g. `mbpp=0.5,leetcode=0.3,kodcode=0.2` (normalised).
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<String>,
    /// Tasks in the mix [default: as many as the proportions allow].
    #[arg(long)]
    pub total: Option<usize>,
    /// Seed of the draw within each share.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub io: CurateIo,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Parts and fractions, e.g. `train=0.9,valid=0.1`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub part: Vec<String>,
    /// Seed of the assignment to parts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: one `<part>.jsonl` per part and `split.manifest.jsonl`.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Canonical task JSONL files (optionally .gz), split together.
    #[arg(required = true)]
    pub inputs: Vec<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Per-task pass rates (`dllm-rl eval --per-task`) for a pass-rate histogram.
    #[arg(long)]
    pub rates: Option<std::path::PathBuf>,
    /// Also write the statistics as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Canonical task JSONL files (optionally .gz), counted together.
    #[arg(required = true)]
    pub inputs: Vec<std::path::PathBuf>,
}

/// Source layouts `prompts import` understands.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// SandboxFusion MBPP rows (assert tests).
    SandboxfusionMbpp,
    /// SandboxFusion CommonOJ rows, e.g. CodeContests (stdin/stdout tests).
    SandboxfusionCommonoj,
    /// rllm LeetCode rows (`check(Solution().method)` asserts).
    RllmLeetcode,
    /// rllm stdin/stdout rows (`tests: {inputs, outputs}`).
    RllmStdio,
    /// KodCode rows (pytest files importing from `solution`).
    Kodcode,
    /// SandboxFusion LiveCodeBench rows (stdin or functional tests; pickled tests decoded
    /// safely).
    SandboxfusionLivecodebench,
    /// SandboxFusion CRUXEval output-prediction rows (print the repr of f(input)).
    SandboxfusionCruxeval,
    /// HumanEval / HumanEval+ (`prompt`, `canonical_solution`, `test`, `entry_point`).
    Humaneval,
    /// MBPP as google-research publishes it (`text`, `code`, `test_list`).
    Mbpp,
    /// APPS and TACO (`question`, `solutions`, `input_output`).
    AppsTaco,
    /// CodeContests from deepmind (`description`, `public_tests`, `private_tests`).
    Codecontests,
    /// LiveCodeBench Hugging Face rows (public and private test cases).
    Livecodebench,
    /// DeepCoder-Preview rows (`problem`, `tests` in each source's shape).
    Deepcoder,
    /// verl rows: guru-RL code, Dream-Coder-RL-17k (`prompt`, `reward_model.ground_truth`).
    Verl,
}

impl From<FormatArg> for dllm_prompts::Format {
    fn from(f: FormatArg) -> Self {
        use dllm_prompts::Format;
        match f {
            FormatArg::SandboxfusionMbpp => Format::SandboxfusionMbpp,
            FormatArg::SandboxfusionCommonoj => Format::SandboxfusionCommonOj,
            FormatArg::RllmLeetcode => Format::RllmLeetcode,
            FormatArg::RllmStdio => Format::RllmStdio,
            FormatArg::Kodcode => Format::Kodcode,
            FormatArg::SandboxfusionLivecodebench => Format::SandboxfusionLivecodebench,
            FormatArg::SandboxfusionCruxeval => Format::SandboxfusionCruxeval,
            FormatArg::Humaneval => Format::Humaneval,
            FormatArg::Mbpp => Format::Mbpp,
            FormatArg::AppsTaco => Format::AppsTaco,
            FormatArg::Codecontests => Format::Codecontests,
            FormatArg::Livecodebench => Format::Livecodebench,
            FormatArg::Deepcoder => Format::Deepcoder,
            FormatArg::Verl => Format::Verl,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The layout of the input rows (each value below names a dataset or a family of them).
    #[arg(long, value_enum)]
    pub format: FormatArg,
    /// Output task file (JSONL).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Stop at the first bad row instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Input files: JSONL or a JSON array (optionally .gz), or Parquet.
    #[arg(required = true)]
    pub inputs: Vec<std::path::PathBuf>,
}
