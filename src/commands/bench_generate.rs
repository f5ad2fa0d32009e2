//! `dllm-rl bench generate`: sampler throughput at the reference setting of
//! `../shared/research/dllm_rl.md` §10 (one prompt of 256 tokens, 16 samples, 128 new tokens in
//! 128 steps, temperature 1.0, top-p 0.95, entropy order), for each sampler configuration.
//!
//! Generated tokens/s counts every canvas position of every sample (samples x new tokens /
//! seconds), as the reference figures do; early stop is off so that every configuration decodes
//! the whole canvas. Then the same with prompts of four lengths, batched by buckets and by
//! padding.

use std::process::ExitCode;

use anyhow::Context;
use dllm_policy::{DreamModel, Init, ModelConfig, Placement};
use dllm_rollout::{generate, Batching, BlockConfig, CacheMode, Request, SamplerConfig, SpecialIds};
use tch::{Kind, Tensor};

use super::bench_model::{built_in_7b, time};
use crate::cli::BenchGenerateArgs;

#[derive(Debug, serde::Serialize)]
struct Row {
    sampler: String,
    seconds: f64,
    generated_tokens_per_second: f64,
    ms_per_forward: f64,
    forwards: i64,
    full_forwards: i64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    device: String,
    dtype: String,
    parameters: i64,
    prompt_len: i64,
    samples: usize,
    new_tokens: i64,
    steps: i64,
    rows: Vec<Row>,
}

pub fn run(args: BenchGenerateArgs) -> anyhow::Result<ExitCode> {
    let placement = Placement::best_available();
    let model = match (&args.model, &args.config) {
        (Some(dir), _) => DreamModel::load(dir, placement).with_context(|| format!("loading {}", dir.display()))?,
        (None, config) => {
            let config = match config {
                Some(path) => ModelConfig::from_file(path)?,
                None => built_in_7b(placement.device)?,
            };
            DreamModel::new(config, placement, Init::Random { seed: 0 })?
        }
    };
    let special = SpecialIds::from_config(&model.config, &[])?;
    let device = placement.device;
    let steps = args.steps.unwrap_or(args.new_tokens);
    let base = SamplerConfig {
        max_new_tokens: args.new_tokens,
        steps,
        temperature: 1.0,
        top_p: 0.95,
        early_stop: false,
        block: None,
        ..SamplerConfig::default()
    };
    let block = |cache, threshold| Some(BlockConfig { length: args.block_length, cache, threshold });
    let samplers = vec![
        ("plain".to_string(), base.clone()),
        (format!("block {} prefix cache", args.block_length), SamplerConfig { block: block(CacheMode::Prefix, None), ..base.clone() }),
        (format!("block {} dual cache", args.block_length), SamplerConfig { block: block(CacheMode::Dual, None), ..base.clone() }),
        (
            format!("block {} prefix cache, threshold {}", args.block_length, args.threshold),
            SamplerConfig { block: block(CacheMode::Prefix, Some(args.threshold)), ..base.clone() },
        ),
        (
            format!("block {} dual cache, threshold {}", args.block_length, args.threshold),
            SamplerConfig { block: block(CacheMode::Dual, Some(args.threshold)), ..base.clone() },
        ),
    ];
    // Prompt tokens drawn below the special ids (any valid ids do for speed).
    tch::manual_seed(3);
    let high = special.stop.iter().chain([&special.mask]).copied().min().unwrap_or(model.config.vocab_size).max(2);
    let prompt = |len: i64| Vec::<i64>::try_from(&Tensor::randint_low(1, high, [len], (Kind::Int64, tch::Device::Cpu))).unwrap_or_default();
    let one = vec![Request { prompt: prompt(args.prompt_len), seeds: (0..args.samples as u64).collect() }];
    let total_tokens = (args.samples as i64 * args.new_tokens) as f64;

    let mut rows = Vec::new();
    let mut measure = |name: String, cfg: &SamplerConfig, requests: &[Request], batching: Batching| -> anyhow::Result<()> {
        let mut last = None;
        let seconds = time(device, args.iters, || {
            last = Some(generate(&model, cfg, requests, &special, batching, 64, &mut |_, _, _| {})?.1);
            Ok(())
        })?;
        let stats = last.unwrap_or_default();
        let tokens: i64 = requests.iter().map(|r| r.seeds.len() as i64).sum::<i64>() * cfg.max_new_tokens;
        let row = Row {
            sampler: name,
            seconds,
            generated_tokens_per_second: tokens as f64 / seconds,
            ms_per_forward: seconds * 1e3 / stats.forwards.max(1) as f64,
            forwards: stats.forwards,
            full_forwards: stats.full_forwards,
        };
        tracing::info!("{}: {:.2} s, {:.1} tokens/s", row.sampler, row.seconds, row.generated_tokens_per_second);
        rows.push(row);
        Ok(())
    };
    for (name, cfg) in &samplers {
        measure(name.clone(), cfg, &one, Batching::Bucket)?;
    }
    if !args.no_batching {
        // Four prompts of different lengths, samples/4 samples each (at least one).
        let per = (args.samples / 4).max(1) as u64;
        let lengths = [args.prompt_len, args.prompt_len * 3 / 4, args.prompt_len / 2, args.prompt_len / 4];
        let ragged: Vec<Request> = lengths.iter().map(|&l| Request { prompt: prompt(l.max(1)), seeds: (0..per).collect() }).collect();
        let cfg = &samplers[1].1;
        for batching in [Batching::Bucket, Batching::Pad] {
            measure(format!("{}, 4 prompt lengths, {batching:?}", samplers[1].0), cfg, &ragged, batching)?;
        }
    }
    let report = Report {
        device: format!("{device:?}"),
        dtype: format!("{:?}", placement.compute_kind),
        parameters: model.config.parameter_count(),
        prompt_len: args.prompt_len,
        samples: args.samples,
        new_tokens: args.new_tokens,
        steps,
        rows,
    };
    println!(
        "{} parameters on {} ({}), prompt {} tokens, {} samples, {} new tokens in {} steps ({} tokens per configuration)",
        report.parameters, report.device, report.dtype, report.prompt_len, report.samples, report.new_tokens, report.steps, total_tokens
    );
    println!("| sampler | s | generated tokens/s | ms/forward | forwards (full) |");
    println!("|---|---|---|---|---|");
    for r in &report.rows {
        println!("| {} | {:.3} | {:.1} | {:.1} | {} ({}) |", r.sampler, r.seconds, r.generated_tokens_per_second, r.ms_per_forward, r.forwards, r.full_forwards);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
