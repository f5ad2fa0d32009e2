//! Arguments of `dllm-rl audit …`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Runs in a store, or in every `store.sqlite` under a folder: status, steps, best and last
    /// reward, duration.
    Runs(RunsArgs),
    /// Step metrics, one row per step (the current attempt: steps redone after a resume replace
    /// the superseded ones).
    Steps(StepsArgs),
    /// Per prompt: pass rate over the run, the step it was first solved at, and whether it was
    /// learned, never solved or forgotten; `--prompt ID` shows one prompt's history.
    Prompts(PromptsArgs),
    /// List rollouts, filtered by step, prompt, verdict or reward.
    Rollouts(RolloutsArgs),
    /// One rollout in full: prompt, completion coloured by decode order, per-test verdicts with
    /// output excerpts, reward components, hack signals.
    Show(ShowArgs),
    /// Suspicious rollouts, each with its reason: hack signals (exits, file or process access,
    /// printing without reading, constant answers), sandbox disagreements, and prompts whose
    /// pass rate jumped between two visits.
    Hacks(HacksArgs),
    /// One self-contained HTML page with charts (reward, pass rate, solve fractions, lengths,
    /// loss, clipping, KL, grad norm, stage times, verdicts, pass rate by source and kind), the
    /// most improved and never solved prompts, and sample rollouts in decode order.
    Report(ReportArgs),
    /// A table of the run as JSONL, CSV or Parquet.
    Export(ExportArgs),
}

/// Which run: a run folder, a store file, or a run's name (or id) looked up under `--db`.
#[derive(Debug, Args)]
pub struct RunSelector {
    /// The run: its folder (holding store.sqlite), its store file, or its name or id.
    pub run: String,
    /// Where to look a run name up: a store file, or a folder searched for store.sqlite files.
    #[arg(long, default_value = ".")]
    pub db: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// A store file, or a folder searched (4 levels deep) for store.sqlite files.
    #[arg(long, default_value = ".")]
    pub db: PathBuf,
    /// Output: aligned columns, CSV or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct StepsArgs {
    #[command(flatten)]
    pub run: RunSelector,
    /// Metrics to show, comma-separated: keys of the step metrics, `seconds.update` for nested
    /// ones; `reward` and `pass_rate` are short for reward_mean and solve_mean. Default: the
    /// main training metrics the run has.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Output: aligned columns, CSV or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PromptSort {
    /// Largest rise in pass rate from first to last visit first.
    Gain,
    /// Highest pass rate over the run first.
    PassRate,
    /// Earliest first solve first (never solved last).
    FirstSolved,
    /// Most samples first.
    Samples,
    Id,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStatus {
    /// Pass rate at the last visit above the first.
    Learned,
    /// No sample ever passed.
    NeverSolved,
    /// Solved at some visit, not at the last.
    Forgotten,
    /// Pass rate at the last visit below the first, but not zero.
    Worse,
    /// Same pass rate at the first and last visit.
    Stable,
    /// Visited once.
    Once,
}

#[derive(Debug, Args)]
pub struct PromptsArgs {
    #[command(flatten)]
    pub run: RunSelector,
    /// One prompt's history, step by step.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Order of the prompts.
    #[arg(long, value_enum, default_value_t = PromptSort::Gain)]
    pub sort: PromptSort,
    /// Only prompts with this status.
    #[arg(long, value_enum)]
    pub status: Option<PromptStatus>,
    /// At most this many rows (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output: aligned columns, CSV or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RolloutsArgs {
    #[command(flatten)]
    pub run: RunSelector,
    /// Only the rollouts of this RL step (0-based, as `audit steps` lists them).
    #[arg(long)]
    pub step: Option<i64>,
    /// Only the rollouts of this prompt id (e.g. mbpp/11).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Verdict summary: passed, wrong_answer, runtime_error, timeout, no_code, ... (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub verdict: Vec<String>,
    /// Only rollouts whose reward is at least this (rollouts left unjudged have none).
    #[arg(long, allow_negative_numbers = true)]
    pub min_reward: Option<f64>,
    /// Only rollouts whose reward is at most this.
    #[arg(long, allow_negative_numbers = true)]
    pub max_reward: Option<f64>,
    /// Only rollouts with hack signals.
    #[arg(long)]
    pub flagged: bool,
    /// At most this many rows (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output: aligned columns, CSV or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Colour {
    /// When stdout is a terminal.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The rollout's id (first column of `audit rollouts`).
    pub rollout: i64,
    /// The store: a file, a run folder, or a folder with exactly one store.sqlite below it.
    #[arg(long, default_value = ".")]
    pub db: PathBuf,
    /// Colour the completion by decode step.
    #[arg(long, value_enum, default_value_t = Colour::Auto)]
    pub colour: Colour,
}

#[derive(Debug, Args)]
pub struct HacksArgs {
    #[command(flatten)]
    pub run: RunSelector,
    /// A rise in one prompt's pass rate between two visits at least this large is reported.
    #[arg(long, default_value_t = 0.75)]
    pub jump: f64,
    /// At most this many rows (0: all).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Output: aligned columns, CSV or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub run: RunSelector,
    /// The HTML file to write (one self-contained page).
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// Sample rollouts shown in decode order.
    #[arg(long, default_value_t = 6)]
    pub samples: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportTable {
    Rollouts,
    Steps,
    Prompts,
    Tests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Parquet,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub run: RunSelector,
    /// Which table to export.
    #[arg(long, value_enum, default_value_t = ExportTable::Rollouts)]
    pub table: ExportTable,
    /// File format of the export.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Output file (default: stdout for JSONL and CSV; Parquet needs a file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}
