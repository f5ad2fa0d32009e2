//! Prompts: import real task sets into the verifier's canonical [`Task`] schema (and, later,
//! curate them: validate, dedupe, decontaminate, difficulty, mix, split).
//!
//! Main types: [`Format`] (the source layouts understood), [`import_file`] and its
//! [`Imported`] report, where every bad row is named by file, row and field.
//!
//! Today: the importers for the formats of `shared/data` (SandboxFusion MBPP and CommonOJ,
//! rllm LeetCode and CodeContests, KodCode). The curation commands are issue 6's work.

mod import;
pub mod render;

pub use dllm_verifier::Task;
pub use import::{import_file, import_text, Format, ImportError, Imported, RowError};
pub use render::{RenderConfig, Rendered};
