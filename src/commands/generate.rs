//! `dllm-rl generate`: completions from a diffusion model, with their decode order.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use dllm_policy::{chat_prompt, ChatMessage, ChatTokenizer, DreamModel, Placement};
use dllm_rollout::order::{ansi, html, printable, Piece};
use dllm_rollout::{generate, rollout_seed, Request, SpecialIds};

use crate::cli::GenerateArgs;

/// A prompt to complete: its id and the exact text the model sees.
struct Prompt {
    id: String,
    text: String,
}

/// Reads `{"prompt": ...}` / `{"messages": [...]}` lines; errors name the file, line and field.
fn read_prompts(path: &Path, chat: bool) -> anyhow::Result<Vec<Prompt>> {
    let mut text = String::new();
    dllm_prompts::open_text(path)?.read_to_string(&mut text).with_context(|| format!("reading {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let id = ["id", "task_id"]
            .iter()
            .find_map(|k| value.get(*k))
            .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
            .unwrap_or_else(|| format!("line-{}", i + 1));
        let text = if let Some(messages) = value.get("messages") {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(messages.clone()).with_context(|| format!("{}: `messages`: expected [{{role, content}}]", at()))?;
            chat_prompt(&messages)
        } else if let Some(prompt) = value.get("prompt").and_then(|p| p.as_str()) {
            if chat {
                chat_prompt(&[ChatMessage::new("user", prompt)])
            } else {
                prompt.to_string()
            }
        } else {
            bail!("{}: `prompt` (a string) or `messages` is required", at());
        };
        prompts.push(Prompt { id, text });
    }
    if prompts.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(prompts)
}

/// Loads a checkpoint (and an adapter) onto the best device, with its tokenizer.
pub(crate) fn load_policy(dir: &Path, lora: Option<&Path>) -> anyhow::Result<(DreamModel, ChatTokenizer)> {
    let placement = Placement::best_available();
    let mut model = DreamModel::load(dir, placement).with_context(|| format!("loading {}", dir.display()))?;
    if let Some(lora) = lora {
        model.load_lora(lora).with_context(|| format!("loading the adapter {}", lora.display()))?;
    }
    let tokenizer = ChatTokenizer::from_dir(dir, &model.config).with_context(|| {
        format!(
            "{} has no usable tokenizer (tokenizer.json, or vocab.json + merges.txt); \
             `dllm-rl model init --byte-tokenizer` writes one for tiny models",
            dir.display()
        )
    })?;
    Ok((model, tokenizer))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    // Before loading the model: a bad flag should not cost a checkpoint load.
    let cfg = args.sampler.config()?;
    let (model, tokenizer) = load_policy(&args.model, args.lora.as_deref())?;
    let prompts = match (&args.prompt, &args.prompts) {
        (Some(text), _) => {
            let text = if args.chat { chat_prompt(&[ChatMessage::new("user", text)]) } else { text.clone() };
            vec![Prompt { id: "prompt".into(), text }]
        }
        (None, Some(path)) => read_prompts(path, args.chat)?,
        (None, None) => bail!("give --prompt or --prompts"),
    };
    let special = SpecialIds::from_config(&model.config, &tokenizer.stop_ids)?;
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prompt = tokenizer.encode(&p.text).with_context(|| format!("tokenizing prompt {}", p.id))?;
            let seeds = (0..args.samples as u64).map(|s| rollout_seed(args.sampler.seed, 0, i as u64, s)).collect();
            Ok(Request { prompt, seeds })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let rows = requests.len() * args.samples;
    let bar = crate::telemetry::progress_bar(rows as u64, "{bar:30} {pos}/{len} completions, {elapsed}");
    if rows <= args.sampler.batch_size {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let (rollouts, stats) = generate(&model, &cfg, &requests, &special, args.sampler.batching, args.sampler.batch_size, &mut |_, done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let mut out = args.out.as_ref().map(|p| std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))).transpose()?;
    let mut sections = Vec::new();
    let mut generated = 0usize;
    for r in &rollouts {
        let completion = r.completion(&special.stop);
        generated += completion.len();
        let text = tokenizer.decode(completion, true)?;
        let title = format!("{} · sample {} · seed {}", prompts[r.request].id, r.sample, r.seed);
        let pieces: Vec<Piece> = completion
            .iter()
            .zip(&r.step_map)
            .map(|(&id, &step)| Ok((tokenizer.decode(&[id], false)?, step)))
            .collect::<anyhow::Result<_>>()?;
        println!("── {title}");
        if args.show_order {
            print!("{}", ansi(&pieces));
        } else {
            println!("{}", printable(&text));
        }
        if let Some(file) = out.as_mut() {
            let line = serde_json::json!({
                "id": prompts[r.request].id, "sample": r.sample, "seed": r.seed,
                "completion": text, "response_ids": r.response, "step_map": r.step_map,
            });
            writeln!(file, "{line}")?;
        }
        sections.push((title, pieces));
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(&sections)).with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(
        "{} completions, {generated} tokens (up to the stop) in {seconds:.2} s: {:.1} tokens/s; {} forwards ({} full) in {} batches",
        rollouts.len(),
        generated as f64 / seconds,
        stats.forwards,
        stats.full_forwards,
        stats.batches
    );
    Ok(ExitCode::SUCCESS)
}
