//! LoRA: low-rank adapters on chosen projections, base frozen, saved and loaded in PEFT's
//! format (`adapter_config.json` + `adapter_model.safetensors`), merged on save when asked.
//!
//! Adapters live in their own fp32 `VarStore`, so an optimizer built on it sees only them and
//! they keep full precision however the base is stored. They are named as PEFT saves them
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so the store's names are
//! the file's names. Initialisation follows PEFT: A ~ U(-1/√in, 1/√in) (Kaiming-uniform with
//! a = √5), B = 0, so a fresh adapter leaves the model unchanged.

use std::path::Path;

use serde_json::{json, Value};
use tch::{nn, Kind, Tensor};

use crate::checkpoint::{load_named, write_json};
use crate::error::{io_error, read_json, PolicyError, Result};
use crate::model::DreamModel;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The projections PEFT users target on Qwen2 models: all seven linears of a block.
pub const ALL_PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Rank, scaling and targets; names as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: i64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    /// Scale `alpha / √r` instead of `alpha / r` (rsLoRA).
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| PolicyError::Config { path: ADAPTER_CONFIG.into(), key: key.into(), reason };
        if self.r <= 0 {
            return Err(bad("r", format!("{} is not a positive rank", self.r)));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad("lora_dropout", format!("{} is not in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(bad("target_modules", "is empty".into()));
        }
        if let Some(t) = self.target_modules.iter().find(|t| !ALL_PROJECTIONS.contains(&t.as_str())) {
            return Err(bad("target_modules", format!("`{t}` is not a projection of this model ({})", ALL_PROJECTIONS.join(", "))));
        }
        Ok(())
    }

    /// `adapter_config.json` as PEFT writes it (keys PEFT reads with their defaults spelled out).
    pub fn to_peft_json(&self, base_model: Option<&str>) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_dora": false,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": null,
            "layers_pattern": null,
            "revision": null,
        })
    }

    /// Reads a PEFT `adapter_config.json`; options this implementation lacks are errors.
    pub fn from_peft_file(path: &Path) -> Result<Self> {
        let v: serde_json::Map<String, Value> = read_json(path)?;
        let bad = |key: &str, reason: &str| PolicyError::Config { path: path.into(), key: key.into(), reason: reason.into() };
        let get = |key: &str| v.get(key).filter(|x| !x.is_null());
        if get("peft_type").and_then(Value::as_str).is_some_and(|t| t != "LORA") {
            return Err(bad("peft_type", "only LORA adapters are supported"));
        }
        for (key, default) in [("use_dora", json!(false)), ("fan_in_fan_out", json!(false)), ("bias", json!("none"))] {
            if get(key).is_some_and(|x| *x != default) {
                return Err(bad(key, &format!("only {default} is supported")));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                return Err(bad(key, "per-module ranks are not supported"));
            }
        }
        for key in ["layers_to_transform", "modules_to_save"] {
            if get(key).is_some() {
                return Err(bad(key, "is not supported (set it to null)"));
            }
        }
        let targets = match get("target_modules") {
            Some(Value::Array(items)) => items.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
            Some(Value::String(s)) if s == "all-linear" => ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            _ => return Err(bad("target_modules", "must be a list of module names")),
        };
        let cfg = LoraConfig {
            r: get("r").and_then(Value::as_i64).ok_or_else(|| bad("r", "missing or not an integer"))?,
            lora_alpha: get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("lora_alpha", "missing or not a number"))?,
            lora_dropout: get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            target_modules: targets,
            use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        };
        cfg.validate().map_err(|e| match e {
            PolicyError::Config { key, reason, .. } => PolicyError::Config { path: path.into(), key, reason },
            other => other,
        })?;
        Ok(cfg)
    }
}

/// One adapter: `scale · dropout(x) Aᵀ Bᵀ`, A (r, in), B (out, r).
#[derive(Debug)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        x.linear(&self.a.to_kind(kind), None::<Tensor>).linear(&self.b.to_kind(kind), None::<Tensor>) * self.scale
    }

    /// `scale · B A`, the update the adapter adds to the base weight, in fp32.
    pub fn delta(&self) -> Tensor {
        self.b.to_kind(Kind::Float).matmul(&self.a.to_kind(Kind::Float)) * self.scale
    }
}

/// The adapters attached to a model and the store that owns them.
pub struct Lora {
    pub config: LoraConfig,
    pub vs: nn::VarStore,
}

/// The store path of PEFT's name `base_model.model.{module}.{which}` (the variable is `weight`).
fn peft_path<'a>(root: &nn::Path<'a>, module: &str, which: &str) -> nn::Path<'a> {
    let dotted = format!("model.{module}.{which}");
    dotted.split('.').fold(root.sub("base_model"), |path, part| path.sub(part))
}

impl DreamModel {
    /// Attaches fresh adapters (B = 0: the model's outputs are unchanged) and freezes the base.
    pub fn attach_lora(&mut self, config: LoraConfig, seed: i64) -> Result<()> {
        config.validate()?;
        if self.lora.is_some() {
            return Err(PolicyError::Invalid("LoRA adapters are already attached".into()));
        }
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(self.placement.device);
        let root = vs.root();
        let (r, scale, dropout) = (config.r, config.scale(), config.lora_dropout);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, linear) in layer.linears_mut() {
                let short = name.rsplit('.').next().unwrap_or(name);
                if !config.target_modules.iter().any(|t| t == short) {
                    continue;
                }
                let (out_dim, in_dim) = (linear.weight.size()[0], linear.weight.size()[1]);
                let module = format!("model.layers.{i}.{name}");
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a = Tensor::empty([r, in_dim], (Kind::Float, self.placement.device)).uniform_(-bound, bound);
                let b = Tensor::zeros([out_dim, r], (Kind::Float, self.placement.device));
                let a = peft_path(&root, &module, "lora_A").add("weight", a, true);
                let b = peft_path(&root, &module, "lora_B").add("weight", b, true);
                linear.lora = Some(LoraAdapter { a, b, scale, dropout });
            }
        }
        self.set_base_trainable(false);
        self.lora = Some(Lora { config, vs });
        Ok(())
    }

    /// Loads a PEFT adapter folder onto this model (attaching adapters of its shape first).
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let config = LoraConfig::from_peft_file(&dir.join(ADAPTER_CONFIG))?;
        self.attach_lora(config, 0)?;
        let targets = self.lora.as_ref().map(|l| l.vs.variables()).unwrap_or_default();
        load_named(&[dir.join(ADAPTER_WEIGHTS)], &targets, &|_| false)
    }

    /// Saves the adapters in PEFT's layout (fp32 weights, as PEFT saves fp32 adapters).
    pub fn save_lora(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let lora = self.lora.as_ref().ok_or_else(|| PolicyError::Invalid("no LoRA adapters are attached".into()))?;
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        write_json(&dir.join(ADAPTER_CONFIG), &lora.config.to_peft_json(base_model))?;
        let named: Vec<(String, Tensor)> = lora.vs.variables().into_iter().collect();
        crate::checkpoint::save_tensors_file(&dir.join(ADAPTER_WEIGHTS), &named, Kind::Float)
    }

    /// Base weights with every adapter folded in, by Hugging Face name.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut deltas = std::collections::HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, linear) in layer.linears() {
                if let Some(adapter) = &linear.lora {
                    deltas.insert(format!("model.layers.{i}.{name}.weight"), adapter.delta());
                }
            }
        }
        Ok(self
            .named_weights()
            .into_iter()
            .map(|(name, w)| match deltas.get(&name) {
                Some(delta) => {
                    let merged = (w.to_kind(Kind::Float) + delta).to_kind(w.kind());
                    (name, merged)
                }
                None => (name, w),
            })
            .collect())
    }
}
