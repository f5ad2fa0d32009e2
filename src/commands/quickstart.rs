//! `dllm-rl quickstart`: the whole pipeline on a laptop, in minutes, from nothing.
//!
//! 1. a family of toy coding tasks (`g(y) = y <op> k`: write `g`), judged by the real verifier
//!    on several inputs each, split three ways: SFT (with reference solutions), RL (tests only)
//!    and held-out;
//! 2. a byte-level tokenizer and a tiny random Dream-architecture model;
//! 3. SFT on the first split, held-out pass@1 (the SFT data is noisy on purpose, as real SFT
//!    data is: `--reference-noise` of the solutions are off by one);
//! 4. coupled GRPO on the second split (prompts and tests only: no solutions), held-out pass@1
//!    again, printed side by side with the path of the run store.
//!
//! Everything is written under `./quickstart/` (or `--out`): the tasks, the configs as TOML
//! files a user can edit and rerun with `dllm-rl sft` / `dllm-rl train`, the checkpoints, the
//! SQLite run stores.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use dllm_policy::{ChatTokenizer, DreamModel, Init, ModelConfig, Placement, SaveOptions};
use dllm_prompts::RenderConfig;
use dllm_rollout::{generate, rollout_seed, BlockConfig, CacheMode, Request, SamplerConfig, SpecialIds};
use dllm_verifier::{Completion, Task, Verifier};

use crate::cli::QuickstartArgs;
use crate::train::config::TrainConfig;
use crate::train::sft::SftConfig;
use crate::train::{chat_text, Trainer};

/// The RL stage's config; the quickstart fills in its seed, steps, SFT checkpoint and format weight.
const RL_CONFIG: &str = include_str!("../../configs/quickstart.toml");

const MODEL: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
  "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3,
  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 264,
  "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "initializer_range": 0.05,
  "mask_token_id": 259, "pad_token_id": 256, "eos_token_id": 256, "torch_dtype": "float32"
}"#;

/// The task family: `g(y) = y <op> k` for every pair of distinct one-letter function and
/// variable names, three operators and k in 1..=9 (17,550 tasks), each tested on five inputs.
/// So many that SFT cannot memorise answers and must learn to read them off the prompt.
fn toy_tasks() -> Vec<Task> {
    let letters: Vec<String> = ('a'..='z').map(String::from).collect();
    let mut tasks = Vec::new();
    for name in &letters {
        for var in letters.iter().filter(|v| *v != name) {
            for (op_name, op) in [("add", "+"), ("sub", "-"), ("mul", "*")] {
                for k in 1..=9i64 {
                    let apply = |x: i64| match op {
                        "+" => x + k,
                        "-" => x - k,
                        _ => x * k,
                    };
                    let tests: Vec<serde_json::Value> =
                        [-3i64, 0, 2, 7, 11].iter().map(|&x| serde_json::json!({"args": [x], "expected": apply(x)})).collect();
                    let task = serde_json::json!({
                        "id": format!("toy/{name}-{var}-{op_name}-{k}"), "source": format!("toy-{op_name}"),
                        "prompt": format!("{name}({var}) = {var} {op} {k}"),
                        "reference": format!("def {name}({var}):\n    return {var} {op} {k}"),
                        "kind": "call", "entry_point": name, "tests": tests,
                    });
                    if let Ok(task) = serde_json::from_value(task) {
                        tasks.push(task);
                    }
                }
            }
        }
    }
    tasks
}

/// Held-out tasks; pass@1 is measured on `HELD_OUT` x `--eval-samples` completions.
const HELD_OUT: usize = 200;

/// Splits by a seeded shuffle: (SFT, RL, held-out).
fn split(tasks: Vec<Task>, seed: u64) -> (Vec<Task>, Vec<Task>, Vec<Task>) {
    let order = crate::train::seeded_permutation(tasks.len(), seed);
    let mut slots: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
    let mut tasks: Vec<Task> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    let held = tasks.split_off(tasks.len() - HELD_OUT);
    let rl = tasks.split_off(tasks.len() / 2);
    (tasks, rl, held)
}

/// SFT data as it comes in practice (scraped, or written by another model): a fraction of the
/// reference solutions are subtly wrong. Here `noise` of them carry an off-by-one (`+ 1`
/// appended), chosen by a seeded draw per task. Too many tasks to memorise which, SFT learns
/// the bug as a habit it falls into at random; RL, rewarded by the tests alone, can unlearn it.
fn add_reference_noise(tasks: &mut [Task], noise: f64, seed: u64) {
    use rand_core::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x006e_6f69_7365);
    for task in tasks {
        let draw = crate::train::unit_draw(rng.next_u64());
        if draw < noise {
            if let Some(reference) = &mut task.reference {
                reference.push_str(" + 1");
            }
        }
    }
}

fn write_tasks(path: &Path, tasks: &[Task]) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for t in tasks {
        writeln!(f, "{}", serde_json::to_string(t)?)?;
    }
    Ok(())
}

/// Short prompts: a tiny model copies from nearby positions far more easily.
fn render() -> RenderConfig {
    RenderConfig { system: Some("Code.".into()), function_instruction: "{entry_point}".into(), ..RenderConfig::default() }
}

fn sampler(temperature: f64) -> SamplerConfig {
    SamplerConfig {
        max_new_tokens: 48,
        steps: 48,
        temperature,
        top_p: 1.0,
        block: Some(BlockConfig { length: 16, cache: CacheMode::Prefix, threshold: None }),
        ..SamplerConfig::default()
    }
}

/// pass@1 over `samples` samples of each task: the fraction of samples that pass every test.
fn pass_at_1(model_dir: &Path, lora: Option<&Path>, tasks: &[Task], samples: usize, verifier: &Verifier, seed: u64) -> anyhow::Result<f64> {
    let (model, tokenizer) = super::generate::load_policy(model_dir, lora)?;
    let special = SpecialIds::from_config(&model.config, &tokenizer.stop_ids)?;
    let render = render();
    let requests = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok(Request { prompt: tokenizer.encode(&chat_text(&render.render(t)?))?, seeds: (0..samples as u64).map(|s| rollout_seed(seed, 9999, i as u64, s)).collect() })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (rollouts, _) = generate(&model, &sampler(1.0), &requests, &special, dllm_rollout::Batching::Bucket, 64, &mut |_, _, _| {})?;
    let prepared = verifier.prepare_all(tasks.to_vec()).into_iter().collect::<Result<Vec<_>, _>>()?;
    let completions: Vec<Completion> = rollouts
        .iter()
        .map(|r| Completion { task: r.request, text: tokenizer.decode(r.completion(&special.stop), true).unwrap_or_default() })
        .collect();
    let verdicts = verifier.verify_batch(&prepared, &completions, &|_| {});
    Ok(verdicts.iter().filter(|v| v.all_passed).count() as f64 / verdicts.len().max(1) as f64)
}

/// The RL stage's config (`configs/quickstart.toml` with the arguments filled in) as TOML text.
fn rl_config(args: &QuickstartArgs, model: &Path) -> anyhow::Result<String> {
    let mut rl_toml: toml::Table = toml::from_str(RL_CONFIG).context("configs/quickstart.toml")?;
    let set = |table: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        if let Some(toml::Value::Table(t)) = table.get_mut(section) {
            t.insert(key.into(), value);
        }
    };
    set(&mut rl_toml, "run", "seed", toml::Value::Integer(args.seed as i64));
    set(&mut rl_toml, "run", "total_steps", toml::Value::Integer(args.rl_steps));
    set(&mut rl_toml, "run", "save_freq", toml::Value::Integer(args.rl_steps));
    set(&mut rl_toml, "model", "path", toml::Value::String(model.display().to_string()));
    set(&mut rl_toml, "reward", "format", toml::Value::Float(args.format_reward));
    Ok(toml::to_string(&rl_toml)?)
}

pub fn run(args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let out = &args.out;
    if out.join("sft").exists() || out.join("rl").exists() {
        anyhow::bail!("{} holds an earlier quickstart; remove it or pass --out", out.display());
    }
    // Check the RL config the arguments make before anything is written: a bad value found only
    // after SFT would leave a folder that blocks the rerun (above).
    let rl_check: TrainConfig = toml::from_str(&rl_config(&args, Path::new("sft/model"))?).context("the RL config")?;
    rl_check.validate().context("the RL config the arguments make")?;
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    println!("quickstart in {}", out.display());

    // 1. Tasks.
    let (mut sft_tasks, rl_tasks, held) = split(toy_tasks(), args.seed);
    add_reference_noise(&mut sft_tasks, args.reference_noise, args.seed);
    write_tasks(&out.join("sft-tasks.jsonl"), &sft_tasks)?;
    write_tasks(&out.join("rl-tasks.jsonl"), &rl_tasks)?;
    write_tasks(&out.join("held-out.jsonl"), &held)?;
    let mut rl_only = rl_tasks.clone();
    rl_only.iter_mut().for_each(|t| t.reference = None);
    write_tasks(&out.join("rl-tasks.jsonl"), &rl_only)?;
    println!(
        "tasks: {} for SFT (with solutions, {:.0}% of them off by one), {} for RL (tests only), {} held out",
        sft_tasks.len(),
        100.0 * args.reference_noise,
        rl_tasks.len(),
        held.len()
    );

    // 2. Tokenizer and model.
    let base = out.join("base-model");
    let map = serde_json::from_str(MODEL)?;
    let config = ModelConfig::from_map(map, Path::new("quickstart model"))?;
    let model = DreamModel::new(config, Placement::best_available(), Init::Random { seed: args.seed as i64 })?;
    model.save_pretrained(&base, &SaveOptions { kind: tch::Kind::Float, ..SaveOptions::default() })?;
    std::fs::write(base.join("tokenizer.json"), dllm_policy::tokenizer::byte_level_tokenizer_json())?;
    let _ = ChatTokenizer::from_dir(&base, &model.config)?;
    drop(model);

    // 3. SFT.
    let sft_toml = format!(
        r#"[run]
name = "sft"
out_dir = "."
seed = {seed}
total_steps = {steps}
save_freq = {steps}

[model]
path = "base-model"

[data]
train_files = ["sft-tasks.jsonl"]
[data.render]
system = "Code."
function_instruction = "{{entry_point}}"

[sft]
batch_size = 32
micro_batch_size = 32
max_response_tokens = 48
context_adaptive_reweight_p = 0.1

[optim]
lr = 3e-3
weight_decay = 0.0
"#,
        seed = args.seed,
        steps = args.sft_steps
    );
    std::fs::write(out.join("sft.toml"), &sft_toml)?;
    let sft_cfg = SftConfig::from_file(&out.join("sft.toml"))?;
    let bar = crate::telemetry::progress_bar(args.sft_steps as u64, "SFT {bar:30} {pos}/{len} {msg} [{elapsed}]");
    let sft_dir = crate::train::sft::run_sft(&sft_cfg, false, &dllm_dist::World::single(), &mut |s, m| {
        bar.set_position(s as u64 + 1);
        bar.set_message(format!("loss {:.3}", m["loss"].as_f64().unwrap_or(f64::NAN)));
    })?;
    bar.finish_and_clear();
    let sft_model = sft_dir.join("model");
    let verifier = Verifier::new(dllm_verifier::Backend::Native, std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let before = pass_at_1(&sft_model, None, &held, args.eval_samples, &verifier, args.seed)?;
    println!("SFT done ({:.0} s): held-out pass@1 {:.1}%", started.elapsed().as_secs_f64(), 100.0 * before);

    // 4. Coupled GRPO from the SFT checkpoint.
    let rl_toml = rl_config(&args, &sft_model)?;
    std::fs::write(out.join("rl.toml"), &rl_toml)?;
    let rl_cfg = TrainConfig::from_file(&out.join("rl.toml"))?;
    let mut trainer = Trainer::new(rl_cfg, false, dllm_dist::World::single())?;
    let bar = crate::telemetry::progress_bar(args.rl_steps as u64, "RL  {bar:30} {pos}/{len} {msg} [{elapsed}]");
    let mut rewards: BTreeMap<i64, f64> = BTreeMap::new();
    trainer.run(&AtomicBool::new(false), &AtomicBool::new(false), &mut |s, m| {
        let r = m["reward_mean"].as_f64().unwrap_or(f64::NAN);
        rewards.insert(s, r);
        bar.set_position(s as u64 + 1);
        bar.set_message(crate::train::step_line(m));
    })?;
    bar.finish_and_clear();
    let store = trainer.store.path.clone();
    let rl_dir = crate::train::latest_checkpoint(&trainer.cfg.run_dir()).map(|(_, d)| d).context("no RL checkpoint")?;
    drop(trainer);
    let after = pass_at_1(&rl_dir.join("model"), None, &held, args.eval_samples, &verifier, args.seed)?;
    let first: Vec<f64> = rewards.values().take(5).copied().collect();
    let last: Vec<f64> = rewards.values().rev().take(5).copied().collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "RL reward: first 5 steps {:.3} -> last 5 steps {:.3}; {} held-out samples at temperature 1.0",
        mean(&first),
        mean(&last),
        held.len() * args.eval_samples
    );
    println!("held-out pass@1: SFT {:.1}% -> RL {:.1}%", 100.0 * before, 100.0 * after);
    println!("run store: {}", store.display());
    println!("audit it:  dllm-rl audit report {} --out report.html", store.parent().unwrap_or(&out).display());
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    let result = serde_json::json!({"sft_pass_at_1": before, "rl_pass_at_1": after, "held_out_samples": held.len() * args.eval_samples,
                                    "seconds": started.elapsed().as_secs_f64(), "store": store, "seed": args.seed});
    std::fs::write(out.join("result.json"), serde_json::to_string_pretty(&result)?)?;
    Ok(ExitCode::SUCCESS)
}
