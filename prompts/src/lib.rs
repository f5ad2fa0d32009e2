//! Prompts: import real task sets into the verifier's canonical [`Task`] schema, render them
//! into what the policy reads, and curate them.
//!
//! - import: [`Format`] (the source layouts understood), [`import_file`] and its [`Imported`]
//!   report, where every bad row is named by file, row and field;
//! - [`render`]: [`RenderConfig`], the instruction by task kind, per source;
//! - [`curate`]: validate, dedupe, decontaminate, difficulty, mix, split, stats; each step
//!   returns the tasks kept and one decision per task.

pub mod curate;
mod import;
pub mod render;

pub use dllm_verifier::Task;
pub use import::{import_file, import_text, open_text, read_jsonl, read_rows, unjudgeable, Format, ImportError, Imported, RowError};
pub use render::{RenderConfig, Rendered};
