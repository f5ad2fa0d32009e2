//! `dllm-rl bench model`: how fast the model runs the three shapes RL needs, and how much GPU
//! memory each takes, on a random model of a given shape.
//!
//! 1. rollout forward: `batch x len` tokens, vocabulary head at the last `new_tokens` positions
//!    only (what a sampler reads), or at every position (`--new-tokens 0`, what the reference
//!    Python code does);
//! 2. old log-probs: the estimator's no-grad pass over `train_batch x (prompt + response)` with
//!    one coupled mask (about half the response masked);
//! 3. the update: the same pass with LoRA, forward + backward, layer recomputation on.
//!
//! First, numerics checks on a two-layer model of the same widths (bf16 against fp32, masked
//! against unmasked attention, padded against unpadded rows); a failed check makes the exit
//! status 1. Times are medians after one warm-up, with the device synchronised around each run. Peak
//! memory is the device's used memory as NVML reports it (the whole process, allocator cache
//! included: what decides whether a batch fits), polled every 2 ms.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dllm_policy::{
    coupled_masks, BackwardOptions, DreamModel, Init, LoraConfig, MaskSeeds, ModelConfig, Pass, Placement, ScoredBatch,
};
use tch::{Device, Kind, Tensor};

use crate::cli::BenchModelArgs;

const DREAM_CODER_7B: &str = include_str!("../../configs/models/dream-coder-7b.json");

/// The built-in 7B shape, for a GPU only: on a CPU it takes tens of GB of memory and hours per
/// measurement (or the OOM killer), so without CUDA it is refused with the way to a small shape.
pub(crate) fn built_in_7b(device: Device) -> anyhow::Result<ModelConfig> {
    if !device.is_cuda() {
        anyhow::bail!(
            "no CUDA device, and the default shape is Dream-Coder 7B, which is for a GPU; \
             on a CPU give a small shape: --config configs/models/tiny.json"
        );
    }
    let map = serde_json::from_str(DREAM_CODER_7B).context("built-in 7B config")?;
    Ok(ModelConfig::from_map(map, std::path::Path::new("configs/models/dream-coder-7b.json"))?)
}

#[derive(Debug, serde::Serialize)]
struct Row {
    measurement: String,
    tokens: i64,
    seconds: f64,
    tokens_per_second: f64,
    tflops: f64,
    peak_memory_gb: Option<f64>,
}

/// A numerics check: relative error ‖x − ref‖ / ‖ref‖ and the bound it must stay under.
#[derive(Debug, serde::Serialize)]
struct Check {
    name: &'static str,
    relative_error: f64,
    bound: f64,
    pass: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    device: String,
    dtype: String,
    parameters: i64,
    checks: Vec<Check>,
    rows: Vec<Row>,
}

fn relative_error(x: &Tensor, reference: &Tensor) -> f64 {
    let reference = reference.to_kind(Kind::Double);
    let diff = (x.to_kind(Kind::Double) - &reference).norm().double_value(&[]);
    let scale = reference.norm().double_value(&[]);
    if diff.is_nan() || scale == 0.0 { f64::INFINITY } else { diff / scale }
}

/// Before timing anything: on a two-layer model of the benchmark's widths, with fp32 weights
/// on the same device, bf16 compute against fp32 compute, the masked attention path (all-ones
/// padding mask) against the unmasked one, and a left-padded row against the same row alone.
fn numerics_checks(cfg: &ModelConfig, device: Device) -> anyhow::Result<Vec<Check>> {
    let _guard = tch::no_grad_guard();
    let mut small = cfg.clone();
    small.num_hidden_layers = 2;
    let fp32 = Placement { device, param_kind: Kind::Float, compute_kind: Kind::Float };
    let mut model = DreamModel::new(small, fp32, Init::Random { seed: 5 })?;
    tch::manual_seed(6);
    let (b, l, pad) = (2, 64, 8);
    let ids = Tensor::randint(cfg.vocab_size - 1, [b, l], (Kind::Int64, device));
    let logits = |m: &DreamModel, ids: &Tensor, attention: Option<&Tensor>| m.logits(&m.forward(ids, attention, Pass::EVAL));
    let reference = logits(&model, &ids, None);
    model.placement.compute_kind = Kind::BFloat16;
    let bf16 = logits(&model, &ids, None);
    let ones = Tensor::ones([b, l], (Kind::Int64, device));
    let masked = logits(&model, &ids, Some(&ones));
    // Row 0 left-padded by `pad` tokens must give the logits of its unpadded tail alone.
    let tail = ids.narrow(1, pad, l - pad).narrow(0, 0, 1);
    let alone = logits(&model, &tail, None);
    let attention = ones.narrow(0, 0, 1).copy();
    let _ = attention.narrow(1, 0, pad).fill_(0);
    let padded = logits(&model, &ids.narrow(0, 0, 1), Some(&attention)).narrow(1, pad + 1, l - pad - 1);
    let check = |name, relative_error: f64, bound: f64| Check { name, relative_error, bound, pass: relative_error < bound };
    Ok(vec![
        check("bf16 compute vs fp32 (logits)", relative_error(&bf16, &reference), 3e-2),
        check("all-ones padding mask vs no mask (bf16)", relative_error(&masked, &bf16), 1e-2),
        // Position pad+0 of the padded row reads the pad's hidden state through the shift.
        check("left-padded row vs the row alone (bf16)", relative_error(&padded, &alone.narrow(1, 1, l - pad - 1)), 2e-2),
    ])
}

/// The device's used memory, polled on a thread; `peak()` since the last `reset()`.
struct MemoryProbe {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryProbe {
    fn start(device: Device) -> Option<Self> {
        let Device::Cuda(index) = device else { return None };
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| tracing::warn!("NVML unavailable, no memory figures: {e}")).ok()?;
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let Ok(gpu) = nvml.device_by_index(index as u32) else { return };
            while !s.load(Ordering::Relaxed) {
                if let Ok(m) = gpu.memory_info() {
                    p.fetch_max(m.used, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Some(MemoryProbe { peak, stop, thread: Some(thread) })
    }

    fn reset(&self) {
        self.peak.store(0, Ordering::Relaxed);
    }

    fn peak_gb(&self) -> f64 {
        std::thread::sleep(Duration::from_millis(10));
        self.peak.load(Ordering::Relaxed) as f64 / 1e9
    }
}

impl Drop for MemoryProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `iters` runs of `f` after one warm-up.
pub(crate) fn time(device: Device, iters: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut samples = Vec::new();
    for _ in 0..iters.max(1) {
        synchronize(device);
        let start = Instant::now();
        f()?;
        synchronize(device);
        samples.push(start.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Matrix-product FLOPs of one forward: weights, attention scores and values, and the head at
/// `head_positions` positions.
fn forward_flops(cfg: &ModelConfig, batch: i64, len: i64, head_positions: i64) -> f64 {
    let (h, v) = (cfg.hidden_size as f64, cfg.vocab_size as f64);
    let trunk_params = (cfg.parameter_count() as f64) - v * h * if cfg.tie_word_embeddings { 1.0 } else { 2.0 };
    let tokens = (batch * len) as f64;
    let attention = 4.0 * (cfg.num_attention_heads * cfg.head_dim) as f64 * (len as f64) * tokens * cfg.num_hidden_layers as f64;
    2.0 * trunk_params * tokens + attention + 2.0 * h * v * head_positions as f64
}

pub fn run(args: BenchModelArgs) -> anyhow::Result<ExitCode> {
    let placement = Placement::best_available();
    let device = placement.device;
    let config = match &args.config {
        Some(path) => ModelConfig::from_file(path)?,
        None => built_in_7b(device)?,
    };
    let probe = MemoryProbe::start(device);
    let peak = |p: &Option<MemoryProbe>| p.as_ref().map(MemoryProbe::peak_gb);
    let params = config.parameter_count();
    tracing::info!("initialising a random {:.2} B-parameter model on {device:?} ({:?})", params as f64 / 1e9, placement.param_kind);
    let checks = numerics_checks(&config, device)?;
    for c in &checks {
        tracing::info!("check {}: relative error {:.2e} (bound {:.0e}) {}", c.name, c.relative_error, c.bound, if c.pass { "ok" } else { "FAILED" });
    }
    let mut model = DreamModel::new(config, placement, Init::Random { seed: 0 })?;
    model.set_base_trainable(false);
    let cfg = model.config.clone();
    let mut rows = Vec::new();
    let mut record = |name: String, tokens: i64, seconds: f64, flops: f64, peak_gb: Option<f64>| {
        tracing::info!("{name}: {:.1} ms, {:.0} tokens/s, {:.1} TFLOP/s", seconds * 1e3, tokens as f64 / seconds, flops / seconds / 1e12);
        rows.push(Row {
            measurement: name,
            tokens,
            seconds,
            tokens_per_second: tokens as f64 / seconds,
            tflops: flops / seconds / 1e12,
            peak_memory_gb: peak_gb,
        });
    };
    let vocab = cfg.vocab_size;

    // 1. The rollout forward.
    tch::manual_seed(1);
    let ids = Tensor::randint(vocab - 1, [args.batch, args.len], (Kind::Int64, device));
    let head_positions = if args.new_tokens > 0 { args.new_tokens.min(args.len) } else { args.len };
    let positions = Tensor::arange(args.len, (Kind::Int64, device))
        .ge(args.len - head_positions)
        .unsqueeze(0)
        .repeat([args.batch, 1]);
    if let Some(p) = &probe {
        p.reset();
    }
    let seconds = time(device, args.iters, || {
        let _guard = tch::no_grad_guard();
        let hidden = model.forward(&ids, None, Pass::EVAL);
        let _logits = if args.new_tokens > 0 { model.logits_at(&hidden, &positions) } else { model.project(&hidden) };
        Ok(())
    })?;
    let flops = forward_flops(&cfg, args.batch, args.len, args.batch * head_positions);
    let name = format!("forward {}x{} (head at {} positions per row)", args.batch, args.len, head_positions);
    record(name, args.batch * args.len, seconds, flops, peak(&probe));

    if args.forward_only {
        return finish(&args, placement, params, checks, rows);
    }

    // 2. Old log-probs: one coupled mask over the response, no grad.
    let len = args.prompt_len + args.response_len;
    let sequences = Tensor::randint(vocab - 1, [args.train_batch, len], (Kind::Int64, device));
    let response = Tensor::arange(len, (Kind::Int64, device)).ge(args.prompt_len).unsqueeze(0).repeat([args.train_batch, 1]);
    let masks = coupled_masks(&response, &MaskSeeds::Shared(7))?;
    let batch = ScoredBatch::new(&model, &sequences, &masks.a, None)?;
    let scored = batch.positions.sum(Kind::Int64).int64_value(&[]);
    if let Some(p) = &probe {
        p.reset();
    }
    let seconds = time(device, args.iters, || {
        let _guard = tch::no_grad_guard();
        let _logprobs = model.score(&batch, Pass::EVAL)?;
        Ok(())
    })?;
    let flops = forward_flops(&cfg, args.train_batch, len, scored);
    record(format!("old log-probs {}x{len} ({scored} scored)", args.train_batch), args.train_batch * len, seconds, flops, peak(&probe));

    // 3. The update: LoRA, forward + backward.
    let lora = LoraConfig { r: args.lora_r, lora_alpha: 2.0 * args.lora_r as f64, ..LoraConfig::default() };
    model.attach_lora(lora, 0)?;
    let adapters = model.lora.as_ref().map(|l| l.vs.trainable_variables()).unwrap_or_default();
    let advantages = Tensor::randn([scored], (Kind::Float, device));
    let objective = |lp: &Tensor, start: i64| (lp * advantages.narrow(0, start, lp.size()[0])).sum(Kind::Float) / scored as f64;
    let options = BackwardOptions { recompute: !args.no_recompute, head_chunk: None };
    if let Some(p) = &probe {
        p.reset();
    }
    let seconds = time(device, args.iters, || {
        let _logprobs = model.backward_scored(&batch, Pass::TRAIN, options, &objective)?;
        for v in &adapters {
            let mut v = v.shallow_clone();
            v.zero_grad();
        }
        Ok(())
    })?;
    // Backward ≈ 2 forwards, plus one more when recomputing.
    let factor = if options.recompute { 4.0 } else { 3.0 };
    let flops = factor * forward_flops(&cfg, args.train_batch, len, scored);
    let name = format!(
        "update {}x{len}, LoRA r={}, {}",
        args.train_batch,
        args.lora_r,
        if options.recompute { "recompute" } else { "no recompute" }
    );
    record(name, args.train_batch * len, seconds, flops, peak(&probe));
    finish(&args, placement, params, checks, rows)
}

fn finish(args: &BenchModelArgs, placement: Placement, parameters: i64, checks: Vec<Check>, rows: Vec<Row>) -> anyhow::Result<ExitCode> {
    let report = Report {
        device: format!("{:?}", placement.device),
        dtype: format!("{:?}", placement.compute_kind),
        parameters,
        checks,
        rows,
    };
    for c in &report.checks {
        println!("check: {}: relative error {:.2e} (bound {:.0e}) {}", c.name, c.relative_error, c.bound, if c.pass { "ok" } else { "FAILED" });
    }
    println!();
    println!("| measurement | tokens | ms | tokens/s | TFLOP/s | peak GB |");
    println!("|---|---|---|---|---|---|");
    for r in &report.rows {
        let peak = r.peak_memory_gb.map_or("-".to_string(), |g| format!("{g:.1}"));
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.1} | {peak} |",
            r.measurement,
            r.tokens,
            r.seconds * 1e3,
            r.tokens_per_second,
            r.tflops
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    // Timings of a model that computes the wrong thing are worthless: say so in the status.
    Ok(if report.checks.iter().all(|c| c.pass) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
