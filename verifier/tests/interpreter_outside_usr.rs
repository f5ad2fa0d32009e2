//! The native sandbox runs an interpreter installed outside `/usr` (here the project's venv,
//! made by `scripts/setup`; conda's `/opt/conda` and pyenv are the same case): its folders are
//! mounted read-only into the minimal root, and nothing else of the host comes with them.

use std::path::Path;
use std::sync::Arc;

use dllm_verifier::{Completion, NativeConfig, NativeSandbox, Verifier};

#[test]
fn a_venv_interpreter_runs_in_the_minimal_root() {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(".venv");
    let python = venv.join("bin/python3");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let sandbox = NativeSandbox::new(NativeConfig { python: python.clone(), ..NativeConfig::default() }).unwrap();
    assert!(sandbox.filesystem_hidden(), "the minimal root must hold only the interpreter's folders");
    let verifier = Verifier::with_sandbox(Arc::new(sandbox), 1).unwrap();
    let task: dllm_verifier::Task =
        serde_json::from_str(r#"{"id":"where","kind":"stdio","tests":[{"stdin":"","stdout":"?"}]}"#).unwrap();
    let tasks = vec![verifier.prepare(task).unwrap()];
    let code = "import os, sys\nprint(sys.prefix)\nprint(sorted(os.listdir(os.path.dirname(sys.prefix))))\n";
    let verdict = verifier.verify_batch(&tasks, &[Completion { task: 0, text: code.into() }], &|_| {}).remove(0);
    let stdout = &verdict.tests[0].stdout;
    assert_eq!(verdict.tests[0].verdict.name(), "wrong_answer", "the program must run: {verdict:?}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(venv.to_str().unwrap()), "{stdout}");
    // The venv's folder shows the venv only, not the project around it.
    assert_eq!(lines.next(), Some("['.venv']"), "{stdout}");
}
