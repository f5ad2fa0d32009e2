//! `dllm-rl serve` driven by SandboxFusion's official client SDK (PyPI `sandbox-fusion==0.3.7`,
//! installed into `.venv` by `scripts/setup`): what verl and Dream-Coder call, unchanged.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_sandbox_fusion_sdk_runs_and_submits_against_the_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let probe = Command::new(&python).args(["-c", "import sandbox_fusion"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "{} cannot import sandbox_fusion: run scripts/setup (it installs sandbox-fusion==0.3.7)",
        python.display()
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
        .args(["serve", "--listen", "127.0.0.1:0", "-j", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dllm-rl serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("address line");
    let endpoint = line.trim().strip_prefix("listening on ").expect("an address").to_owned();
    let out = Command::new(&python)
        .arg(root.join("tests/serve/sdk_client.py"))
        .arg(root.join("tests/data/shared/sandboxfusion"))
        .env("SANDBOX_FUSION_ENDPOINT", &endpoint)
        .output()
        .expect("run the SDK client");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
}
