//! `dllm-rl bench dist`: the collectives' speed on the world the launcher gives (Gloo on CPUs,
//! NCCL on GPUs): all-reduce bandwidth by message size, and the bucketed gradient sum of a
//! model-shaped parameter set, done as the trainer does it each step (fp32 buckets).
//!
//! Run it as the trainer runs: `torchrun --nproc-per-node N --no-python dllm-rl bench dist`.
//! Alone (where the trainer would use no engine at all) it joins a group of one on loopback, so
//! that the engine's own cost is what is timed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dllm_dist::{BackendKind, Launch, ReduceOp, World};
use dllm_policy::ModelConfig;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::bench_model::{built_in_7b, synchronize, time};
use crate::cli::BenchDistArgs;

#[derive(Serialize)]
struct SizeRow {
    bytes: i64,
    seconds: f64,
    /// Bytes of the message over the time (nccl-tests' "algbw").
    algorithm_gb_per_s: f64,
    /// algbw x 2 (n - 1) / n: what each link carried in a ring (nccl-tests' "busbw").
    bus_gb_per_s: f64,
}

#[derive(Serialize)]
struct GradientRow {
    parameters: i64,
    tensors: usize,
    kind: String,
    seconds: f64,
    sums_correct: bool,
}

#[derive(Serialize)]
struct Report {
    world_size: usize,
    launcher: String,
    backend: String,
    device: String,
    sizes: Vec<SizeRow>,
    gradients: Option<GradientRow>,
}

pub fn run(args: BenchDistArgs) -> anyhow::Result<ExitCode> {
    let cuda = !args.cpu && tch::Cuda::is_available();
    let timeout = Duration::from_secs(args.timeout_s);
    let backend = if cuda { BackendKind::Nccl } else { BackendKind::Gloo };
    let world = match Launch::from_env()? {
        Some(launch) => World::join(&launch, backend, timeout),
        None => World::join(&alone()?, backend, timeout),
    }
    .context("joining the launcher's group")?;
    let device = if cuda { Device::Cuda(world.local_rank) } else { Device::Cpu };
    let backend = world.backend().map_or("none (one process)".to_string(), |b| format!("{b:?}"));
    if world.is_main() {
        tracing::info!("world of {} ({}), {backend}, buffers on {device:?}", world.size, world.launcher);
    }
    let ring = if world.size > 1 { 2.0 * (world.size as f64 - 1.0) / world.size as f64 } else { 1.0 };
    let mut sizes = Vec::new();
    let mut bytes: i64 = 4096;
    while bytes <= args.max_mib as i64 * 1024 * 1024 {
        let mut t = Tensor::rand([bytes / 4], (Kind::Float, device));
        let seconds = time(device, args.iters, || world.all_reduce(&mut t, ReduceOp::Sum).map_err(Into::into))?;
        let algbw = bytes as f64 / seconds / 1e9;
        sizes.push(SizeRow { bytes, seconds, algorithm_gb_per_s: algbw, bus_gb_per_s: algbw * ring });
        bytes *= 4;
    }
    let gradients = match (&args.config, cuda) {
        (Some(path), _) => Some(gradient_sum(&world, &ModelConfig::from_file(path)?, device, args.iters)?),
        (None, true) => Some(gradient_sum(&world, &built_in_7b(device)?, device, args.iters)?),
        (None, false) => None,
    };
    let report = Report { world_size: world.size, launcher: world.launcher.to_string(), backend, device: format!("{device:?}"), sizes, gradients };
    world.barrier()?;
    if !world.is_main() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("all-reduce (sum, fp32), world of {} ({}), {} on {}", report.world_size, report.launcher, report.backend, report.device);
    println!("| bytes | ms | algbw GB/s | busbw GB/s |");
    println!("|---|---|---|---|");
    for r in &report.sizes {
        println!("| {} | {:.3} | {:.2} | {:.2} |", r.bytes, r.seconds * 1e3, r.algorithm_gb_per_s, r.bus_gb_per_s);
    }
    if let Some(g) = &report.gradients {
        println!(
            "\ngradient sum, {} parameters in {} tensors ({}), buckets of {} MiB in fp32: {:.3} s{}",
            g.parameters,
            g.tensors,
            g.kind,
            dllm_dist::BUCKET_BYTES >> 20,
            g.seconds,
            if g.sums_correct { "" } else { " — WRONG SUMS" }
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.gradients.as_ref().is_some_and(|g| !g.sums_correct) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// A group of one on a free loopback port.
fn alone() -> anyhow::Result<Launch> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free loopback port")?.port();
    Ok(Launch { launcher: "single", ..Launch::loopback(0, 1, port) })
}

/// Parameters in the shapes of `cfg`'s decoder (bf16 on a GPU, fp32 on a CPU), each with a
/// gradient of ones; the time of one bucketed sum, and whether every gradient became the world
/// size (checked on the first and last tensor, after the timed runs reset them).
fn gradient_sum(world: &World, cfg: &ModelConfig, device: Device, iters: usize) -> anyhow::Result<GradientRow> {
    let kind = if device.is_cuda() { Kind::BFloat16 } else { Kind::Float };
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    let mut shapes: Vec<Vec<i64>> = vec![vec![v, d]];
    for _ in 0..cfg.num_hidden_layers {
        shapes.extend([vec![q, d], vec![q], vec![kv, d], vec![kv], vec![kv, d], vec![kv], vec![d, q]]);
        shapes.extend([vec![f, d], vec![f, d], vec![d, f], vec![d], vec![d]]);
    }
    shapes.extend([vec![d], vec![v, d]]);
    let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::zeros(s.as_slice(), (kind, device)).set_requires_grad(true)).collect();
    let ones = || -> anyhow::Result<()> {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let total: Vec<Tensor> = params.iter().map(|p| p.sum(Kind::Float)).collect();
        Tensor::stack(&total, 0).sum(Kind::Float).backward();
        Ok(())
    };
    let mut seconds = Vec::new();
    for i in 0..=iters.max(1) {
        ones()?;
        synchronize(device);
        let start = Instant::now();
        world.all_reduce_gradients(&params)?;
        synchronize(device);
        if i > 0 {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    seconds.sort_by(f64::total_cmp);
    let expected = world.size as f64;
    let correct = |p: &Tensor| (p.grad().to_kind(Kind::Float) - expected).abs().max().double_value(&[]) == 0.0;
    let sums_correct = params.first().is_some_and(correct) && params.last().is_some_and(correct);
    Ok(GradientRow {
        parameters: params.iter().map(|p| p.numel() as i64).sum(),
        tensors: params.len(),
        kind: format!("{kind:?}"),
        seconds: seconds[seconds.len() / 2],
        sums_correct,
    })
}
