//! `dllm-rl model init | info`: random checkpoints of any shape, and what a checkpoint holds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use dllm_policy::checkpoint::weight_files;
use dllm_policy::{DreamModel, Init, LoraConfig, ModelConfig, Placement, SaveOptions};

use crate::cli::{ModelCommand, ModelInfoArgs, ModelInitArgs};

pub fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Init(args) => init(args),
        ModelCommand::Info(args) => info(args),
    }
}

fn init(args: ModelInitArgs) -> anyhow::Result<ExitCode> {
    let config = ModelConfig::from_file(&args.config)?;
    warn_ignored(&config);
    let params = config.parameter_count();
    tracing::info!("initialising {} parameters from {}", count(params), args.config.display());
    // Created in the saved dtype: a 7B model in bf16 needs 15 GB of host memory, not 30.
    let placement = Placement { param_kind: args.dtype.kind(), ..Placement::cpu() };
    let mut model = DreamModel::new(config, placement, Init::Random { seed: args.seed })?;
    let options = SaveOptions { kind: args.dtype.kind(), max_shard_bytes: args.max_shard_bytes, ..SaveOptions::default() };
    model.save_pretrained(&args.out, &options).with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(tokenizer) = &args.tokenizer {
        std::fs::copy(tokenizer, args.out.join("tokenizer.json")).with_context(|| format!("copying {}", tokenizer.display()))?;
    }
    if args.byte_tokenizer {
        let path = args.out.join("tokenizer.json");
        std::fs::write(&path, dllm_policy::tokenizer::byte_level_tokenizer_json()).with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(r), Some(dir)) = (args.lora_r, &args.lora_out) {
        let lora = LoraConfig { r, lora_alpha: 2.0 * r as f64, ..LoraConfig::default() };
        model.attach_lora(lora, args.seed)?;
        model.save_lora(dir, Some(&crate::train::absolute(&args.out).display().to_string()))?;
        println!("LoRA adapters (r = {r}) written to {}", dir.display());
    }
    println!("{params} parameters written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// A parameter count in the unit that suits it: a tiny test model is `139.8 K`, not `0.000 B`.
fn count(n: i64) -> String {
    let x = n as f64;
    match n {
        1_000_000_000.. => format!("{:.3} B", x / 1e9),
        1_000_000.. => format!("{:.1} M", x / 1e6),
        1_000.. => format!("{:.1} K", x / 1e3),
        _ => n.to_string(),
    }
}

/// Bytes in the unit that suits them (the tiny model's weights are not `0.00 GB`).
fn size(n: u64) -> String {
    let x = n as f64;
    match n {
        1_000_000_000.. => format!("{:.2} GB", x / 1e9),
        1_000_000.. => format!("{:.1} MB", x / 1e6),
        1_000.. => format!("{:.1} KB", x / 1e3),
        _ => format!("{n} bytes"),
    }
}

fn warn_ignored(config: &ModelConfig) {
    if !config.ignored_keys.is_empty() {
        tracing::warn!("config keys not used by this implementation (kept on save): {}", config.ignored_keys.join(", "));
    }
}

#[derive(serde::Serialize)]
struct Info {
    model_type: String,
    parameters: i64,
    layers: i64,
    hidden_size: i64,
    intermediate_size: i64,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    vocab_size: i64,
    tie_word_embeddings: bool,
    logit_shift: bool,
    mask_token_id: Option<i64>,
    pad_token_id: Option<i64>,
    eos_token_ids: Vec<i64>,
    bos_token_id: Option<i64>,
    weight_files: Vec<String>,
    weight_bytes: u64,
    tokenizer: bool,
    ignored_keys: Vec<String>,
}

fn info(args: ModelInfoArgs) -> anyhow::Result<ExitCode> {
    let cfg = ModelConfig::from_dir(&args.dir)?;
    let files = weight_files(&args.dir)?;
    let weight_bytes = weight_bytes(&files)?;
    let t = &cfg.tokens;
    let info = Info {
        model_type: cfg.model_type.clone(),
        parameters: cfg.parameter_count(),
        layers: cfg.num_hidden_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        vocab_size: cfg.vocab_size,
        tie_word_embeddings: cfg.tie_word_embeddings,
        logit_shift: cfg.logit_shift,
        mask_token_id: t.mask,
        pad_token_id: t.pad,
        eos_token_ids: t.eos.clone(),
        bos_token_id: t.bos,
        weight_files: files.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy().into_owned()).collect(),
        weight_bytes,
        tokenizer: args.dir.join("tokenizer.json").exists(),
        ignored_keys: cfg.ignored_keys.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let id = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    println!("{}  ({}, {} parameters)", args.dir.display(), info.model_type, count(info.parameters));
    println!(
        "  {} layers, hidden {}, MLP {}, heads {} q / {} kv x {}, vocabulary {}{}",
        info.layers,
        info.hidden_size,
        info.intermediate_size,
        info.heads,
        info.kv_heads,
        info.head_dim,
        info.vocab_size,
        if info.tie_word_embeddings { ", tied head" } else { "" }
    );
    println!(
        "  tokens: mask {}, pad {}, eos {:?}, bos {}; logit shift {}",
        id(info.mask_token_id),
        id(info.pad_token_id),
        info.eos_token_ids,
        id(info.bos_token_id),
        if info.logit_shift { "on" } else { "off" }
    );
    println!(
        "  weights: {} file(s), {}; tokenizer.json {}",
        info.weight_files.len(),
        size(info.weight_bytes),
        if info.tokenizer { "present" } else { "absent" }
    );
    if info.mask_token_id.is_none() {
        println!("  warning: no mask_token_id: diffusion sampling and the estimator need one");
    }
    if !info.ignored_keys.is_empty() {
        println!("  keys not used (kept on save): {}", info.ignored_keys.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The weight files' total size, each checked against its safetensors header: a shard the index
/// names but the folder lacks, or a file cut short by a failed copy, is an error naming the file,
/// not a smaller total printed as success.
fn weight_bytes(files: &[PathBuf]) -> anyhow::Result<u64> {
    let missing: Vec<String> = files.iter().filter(|f| !f.exists()).map(|f| format!("`{}`", f.display())).collect();
    if !missing.is_empty() {
        bail!("{} weight file(s) missing: {}", missing.len(), missing.join(", "));
    }
    files.iter().map(|f| checked_size(f).with_context(|| f.display().to_string())).sum()
}

/// The size of one safetensors file, which must be what its header describes. Only the header is
/// read (a few KB), so this stays cheap on a 15 GB checkpoint.
fn checked_size(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|_| anyhow::anyhow!("{len} bytes: too short for a safetensors header"))?;
    let header_len = u64::from_le_bytes(prefix);
    // Checked before allocating: a corrupt length must not ask for terabytes.
    if header_len > len - 8 {
        bail!("the header claims {header_len} bytes, the file holds {len}");
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| anyhow::anyhow!("not a safetensors header: {e}"))?;
    let expected = 8 + header_len + metadata.data_len() as u64;
    if len != expected {
        bail!("{len} bytes, but its header describes {expected} (truncated or overwritten?)");
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// A safetensors file of one f32 tensor with `n` values.
    fn write_weights(path: &std::path::Path, n: usize) {
        let data = vec![0u8; 4 * n];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n], &data).unwrap();
        safetensors::serialize_to_file([("w", view)], None, path).unwrap();
    }

    #[test]
    fn weight_bytes_names_missing_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("model-00001-of-00002.safetensors");
        let two = dir.path().join("model-00002-of-00002.safetensors");
        write_weights(&one, 100);
        write_weights(&two, 50);
        let files: Vec<PathBuf> = vec![one.clone(), two.clone()];
        let total = std::fs::metadata(&one).unwrap().len() + std::fs::metadata(&two).unwrap().len();
        assert_eq!(super::weight_bytes(&files).unwrap(), total);

        let bytes = std::fs::read(&two).unwrap();
        std::fs::write(&two, &bytes[..bytes.len() - 10]).unwrap();
        let err = format!("{:#}", super::weight_bytes(&files).unwrap_err());
        assert!(err.starts_with(&two.display().to_string()) && err.contains("truncated"), "{err}");
        std::fs::write(&two, &bytes[..4]).unwrap();
        let err = format!("{:#}", super::weight_bytes(&files).unwrap_err());
        assert!(err.contains("too short for a safetensors header"), "{err}");
        // A header length past the end of the file (`bad_hdrlen`): refused before it is allocated.
        let mut lying = bytes.clone();
        lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&two, &lying).unwrap();
        let err = format!("{:#}", super::weight_bytes(&files).unwrap_err());
        assert!(err.contains("the header claims 1099511627776 bytes"), "{err}");

        std::fs::remove_file(&two).unwrap();
        let err = format!("{:#}", super::weight_bytes(&files).unwrap_err());
        assert_eq!(err, format!("1 weight file(s) missing: `{}`", two.display()));
    }

    #[test]
    fn parameter_counts_use_a_unit_that_shows_them() {
        let got: Vec<String> = [7_615_616_512, 494_032_768, 139_840, 512].into_iter().map(super::count).collect();
        assert_eq!(got, ["7.616 B", "494.0 M", "139.8 K", "512"]);
        let got: Vec<String> = [15_231_233_024, 562_104, 512].into_iter().map(super::size).collect();
        assert_eq!(got, ["15.23 GB", "562.1 KB", "512 bytes"]);
    }
}
