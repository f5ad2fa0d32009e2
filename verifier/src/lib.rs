//! The verifier: runs untrusted generated code against a task's unit tests and decides, in the
//! trusted parent, whether each test passed.
//!
//! Main types:
//! - [`Task`]: the canonical task (stdio, call or assert tests, limits, comparator); JSON
//!   Schema in `schema/task.schema.json`.
//! - [`Sandbox`]: where code runs: [`NativeSandbox`] (CPython in a forked, rlimited,
//!   namespaced child of a warm fork-server) or [`WasmSandbox`] (CPython for WASI in wasmtime).
//!   A sandbox only *produces values*: stdout, returned values, the answers to the calls the
//!   trusted side makes into candidate code ([`sandbox::Conversation`]).
//! - [`Judge`]: compares those values with the expected ones, which never enter the sandbox;
//!   assertion tests run in a trusted process that calls the candidate across the boundary
//!   (see [`harness`]).
//! - [`Verifier`]: a bounded worker pool with `verify_batch` for the trainer and the CLI.
//! - [`TaskVerdict`] / [`TestVerdict`]: passed, wrong_answer, runtime_error, timeout,
//!   memory_limit, output_limit, sandbox_error (retryable, never the policy's fault), not_run
//!   (after the first failure, with [`Verifier::with_fail_fast`]).
//!
//! This crate does not link libtorch, so it builds and tests on its own.

pub mod affinity;
pub mod compare;
pub mod exact_json;
pub mod extract;
pub mod harness;
pub mod judge;
pub mod native;
pub mod pool;
pub mod sandbox;
pub mod task;
pub mod verdict;
pub mod wasm;

pub use extract::{extract_code, CodeSource, Extracted};
pub use judge::{Judge, PreparedTask};
pub use native::{NativeConfig, NativeSandbox};
pub use pool::{Backend, Completion, Verifier, VerifierError};
pub use sandbox::{Sandbox, SandboxError};
pub use task::{CallTest, Limits, ReleaseDate, StdioTest, Task, TestSpec, TextComparator, ValueComparator};
pub use verdict::{TaskVerdict, TestResult, TestVerdict};
pub use wasm::{WasmConfig, WasmSandbox};

/// The wasmtime release the wasm sandbox is built on (pinned in the workspace `Cargo.toml`;
/// a test checks the two agree).
pub const WASMTIME_VERSION: &str = "48.0.8";

#[cfg(test)]
mod tests {
    #[test]
    fn wasmtime_version_constant_matches_the_lock_file() {
        let lock = include_str!("../../Cargo.lock");
        let entry = lock.split("[[package]]").find(|p| p.contains("name = \"wasmtime\"\n"));
        let entry = entry.expect("wasmtime is in Cargo.lock");
        assert!(
            entry.contains(&format!("version = \"{}\"", super::WASMTIME_VERSION)),
            "WASMTIME_VERSION is stale: {entry}"
        );
    }
}
