//! The model against Hugging Face transformers and PEFT, through the fixtures that
//! `scripts/reference/qwen2_parity.py make` wrote into `tests/data/qwen2-reference/` (a tiny random
//! Qwen2, the logits transformers computes with a bidirectional mask, a PEFT adapter).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dllm_policy::checkpoint::{weight_files, INDEX_FILE};
use dllm_policy::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use dllm_policy::{DreamModel, Pass, Placement, PolicyError, SaveOptions};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-reference").join(name)
}

fn expected() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture("expected.safetensors")).unwrap().into_iter().collect()
}

fn logits(model: &DreamModel, ids: &Tensor, attention: Option<&Tensor>) -> Tensor {
    tch::no_grad(|| model.logits(&model.forward(ids, attention, Pass::EVAL))).to_kind(Kind::Float)
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn logits_match_transformers_within_1e4() {
    let model = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    assert_eq!(model.config.tokens.mask, Some(127), "mask_token_id read from config.json");
    let e = expected();
    let got = logits(&model, &e["input_ids"], Some(&e["attention"]));
    let diff = max_difference(&got, &e["logits"]);
    assert!(diff < 1e-4, "max |Δ| = {diff}");
    // The unpadded row alone, with no mask at all (the flash path on a GPU), gives the same.
    let row = e["input_ids"].narrow(0, 0, 1);
    let diff = max_difference(&logits(&model, &row, None), &e["logits"].narrow(0, 0, 1));
    assert!(diff < 1e-4, "no-mask path: max |Δ| = {diff}");
}

#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    assert!(fixture("model-sharded").join(INDEX_FILE).exists());
    assert_eq!(weight_files(&fixture("model-sharded")).unwrap().len(), 3);
    let single = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    let sharded = DreamModel::load(&fixture("model-sharded"), Placement::cpu()).unwrap();
    for ((n1, w1), (n2, w2)) in single.named_weights().iter().zip(sharded.named_weights().iter()) {
        assert_eq!(n1, n2);
        assert!(w1.equal(w2), "{n1}");
    }
}

#[test]
fn peft_adapter_loads_and_matches_peft_logits() {
    let mut model = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    model.load_lora(&fixture("adapter")).unwrap();
    let e = expected();
    let got = logits(&model, &e["input_ids"], Some(&e["attention"]));
    let diff = max_difference(&got, &e["logits_lora"]);
    assert!(diff < 1e-4, "max |Δ| = {diff}");
    // Adapters off is the base model (the reference policy at no memory cost).
    let base = tch::no_grad(|| model.logits(&model.forward(&e["input_ids"], Some(&e["attention"]), Pass::BASE)));
    assert!(max_difference(&base, &e["logits"]) < 1e-4);
}

#[test]
fn saved_adapter_has_peft_names_shapes_and_config() {
    let mut model = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    model.load_lora(&fixture("adapter")).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_lora(out.path(), Some("tiny-qwen2")).unwrap();
    let read = |dir: &Path| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(dir.join(ADAPTER_WEIGHTS)).unwrap().into_iter().collect()
    };
    let (ours, peft) = (read(out.path()), read(&fixture("adapter")));
    let mut names: Vec<&String> = ours.keys().collect();
    names.sort();
    let mut peft_names: Vec<&String> = peft.keys().collect();
    peft_names.sort();
    assert_eq!(names, peft_names);
    for (name, t) in &peft {
        assert!(ours[name].equal(t), "{name}");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    // And it loads back into a fresh model.
    let mut again = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    again.load_lora(out.path()).unwrap();
}

#[test]
fn save_then_load_round_trips_weights_config_and_logits() {
    let model = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = SaveOptions { kind: Kind::Float, max_shard_bytes: 40_000, copy_from: Some(fixture("model")), merge_lora: false };
    model.save_pretrained(out.path(), &options).unwrap();
    assert!(out.path().join(INDEX_FILE).exists(), "small shards give an index");
    assert!(weight_files(out.path()).unwrap().len() >= 3);
    let back = DreamModel::load(out.path(), Placement::cpu()).unwrap();
    for ((n1, w1), (n2, w2)) in model.named_weights().iter().zip(back.named_weights().iter()) {
        assert_eq!(n1, n2);
        assert!(w1.equal(w2), "{n1}");
    }
    assert_eq!(back.config.tokens, model.config.tokens);
    assert_eq!(back.config.rope_theta, 10000.0);
    let e = expected();
    assert!(max_difference(&logits(&back, &e["input_ids"], Some(&e["attention"])), &e["logits"]) < 1e-4);
    // Saving again over the folder as one file leaves no stale index behind.
    back.save_pretrained(out.path(), &SaveOptions { kind: Kind::Float, ..SaveOptions::default() }).unwrap();
    assert!(!out.path().join(INDEX_FILE).exists());
    DreamModel::load(out.path(), Placement::cpu()).unwrap();
}

#[test]
fn merged_save_equals_the_adapted_model() {
    let mut model = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    model.load_lora(&fixture("adapter")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = SaveOptions { kind: Kind::Float, merge_lora: true, ..SaveOptions::default() };
    model.save_pretrained(out.path(), &options).unwrap();
    let merged = DreamModel::load(out.path(), Placement::cpu()).unwrap();
    let e = expected();
    let diff = max_difference(&logits(&merged, &e["input_ids"], Some(&e["attention"])), &e["logits_lora"]);
    assert!(diff < 1e-4, "max |Δ| = {diff}");
}

#[test]
fn bf16_save_halves_the_files_and_stays_close() {
    let model = DreamModel::load(&fixture("model"), Placement::cpu()).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(out.path(), &SaveOptions::default()).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let bf16 = Tensor::read_safetensors(out.path().join("model.safetensors")).unwrap();
    assert!(bf16.iter().all(|(_, t)| t.kind() == Kind::BFloat16));
    // Loading bf16 files into fp32 storage converts them.
    let back = DreamModel::load(out.path(), Placement::cpu()).unwrap();
    assert!(back.named_weights().iter().all(|(_, t)| t.kind() == Kind::Float));
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named() {
    let source = fixture("model");
    let all: Vec<(String, Tensor)> = Tensor::read_safetensors(source.join("model.safetensors")).unwrap();
    let write = |tensors: &[(String, Tensor)]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, dir.path().join("model.safetensors")).unwrap();
        dir
    };
    let without: Vec<(String, Tensor)> = all.iter().filter(|(n, _)| n != "model.norm.weight").map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let err = DreamModel::load(write(&without).path(), Placement::cpu()).err().unwrap();
    assert!(matches!(err, PolicyError::Checkpoint { .. }) && err.to_string().contains("`model.norm.weight`"), "{err}");

    let mut extra: Vec<(String, Tensor)> = all.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    extra.push(("model.layers.9.mlp.up_proj.weight".into(), Tensor::zeros([2], (Kind::Float, tch::Device::Cpu))));
    let err = DreamModel::load(write(&extra).path(), Placement::cpu()).err().unwrap();
    assert!(err.to_string().contains("1 unexpected tensor(s) [`model.layers.9.mlp.up_proj.weight`]"), "{err}");

    let misshapen: Vec<(String, Tensor)> = all
        .iter()
        .map(|(n, t)| (n.clone(), if n == "model.norm.weight" { Tensor::ones([31], (Kind::Float, tch::Device::Cpu)) } else { t.shallow_clone() }))
        .collect();
    let err = DreamModel::load(write(&misshapen).path(), Placement::cpu()).err().unwrap();
    assert!(err.to_string().contains("`model.norm.weight` has shape [31]"), "{err}");
}

#[test]
fn tied_embeddings_save_no_head_and_reload() {
    let e = expected();
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("model/config.json")).unwrap()).unwrap();
    config["tie_word_embeddings"] = true.into();
    std::fs::write(dir.path().join("tiny.json"), config.to_string()).unwrap();
    let cfg = dllm_policy::ModelConfig::from_file(&dir.path().join("tiny.json")).unwrap();
    let model = DreamModel::new(cfg, Placement::cpu(), dllm_policy::Init::Random { seed: 3 }).unwrap();
    let out = dir.path().join("ckpt");
    model.save_pretrained(&out, &SaveOptions { kind: Kind::Float, ..SaveOptions::default() }).unwrap();
    let names: Vec<String> = Tensor::read_safetensors(out.join("model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(!names.contains(&"lm_head.weight".to_string()));
    let back = DreamModel::load(&out, Placement::cpu()).unwrap();
    let ids = e["input_ids"].narrow(0, 0, 1);
    assert!(max_difference(&logits(&model, &ids, None), &logits(&back, &ids, None)) < 1e-6);
}
