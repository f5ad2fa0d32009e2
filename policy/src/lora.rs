//! LoRA: low-rank adapters on chosen projections, base frozen, saved and loaded in PEFT's
//! format (`adapter_config.json` + `adapter_model.safetensors`), merged on save when asked.
//!
//! Adapters live in their own fp32 `VarStore`, so an optimizer built on it sees only them and
//! they keep full precision however the base is stored. They are named as PEFT saves them
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so the store's names are
//! the file's names. Initialisation follows PEFT: A ~ U(-1/√in, 1/√in) (Kaiming-uniform with
//! a = √5), B = 0, so a fresh adapter leaves the model unchanged.

use std::path::Path;

use regex::Regex;
use serde_json::{json, Value};
use tch::{nn, Kind, Tensor};

use crate::checkpoint::{load_named, write_json};
use crate::error::{io_error, read_json, PolicyError, Result};
use crate::model::{DreamModel, Linear};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The projections PEFT users target on Qwen2 models: all seven linears of a block.
pub const ALL_PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Modules PEFT can put adapters on that this implementation cannot: a target that reaches one
/// is refused rather than loaded without it.
const UNADAPTABLE: [&str; 2] = ["model.embed_tokens", "lm_head"];

/// PEFT's two forms of `target_modules` and `exclude_modules`, tested against a module's full name
/// (`model.layers.0.self_attn.q_proj`) by PEFT's rule (`check_target_module_exists`).
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleSet {
    /// A JSON list: an entry matches the module it names in full and every module whose name ends
    /// in `.{entry}`, so `q_proj`, `self_attn.q_proj` and `model.layers.0.self_attn.q_proj` all
    /// work (PEFT saves `"all-linear"` as the full names).
    List(Vec<String>),
    /// A JSON string: a regex that must match the whole name (Python's `re.fullmatch`).
    Regex(String),
}

impl ModuleSet {
    pub fn all_projections() -> Self {
        ModuleSet::List(ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect())
    }

    fn to_json(&self) -> Value {
        match self {
            ModuleSet::List(names) => json!(names),
            ModuleSet::Regex(pattern) => json!(pattern),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            ModuleSet::List(names) => names.is_empty(),
            ModuleSet::Regex(pattern) => pattern.is_empty(),
        }
    }

    /// The set ready to test names, its regex compiled once; `key` names it in errors.
    fn matcher(&self, key: &str) -> Result<Matcher<'_>> {
        match self {
            ModuleSet::List(names) => Ok(Matcher::List(names)),
            // Anchored: `is_match` finds a match anywhere, PEFT's `re.fullmatch` only the whole name.
            ModuleSet::Regex(pattern) => Regex::new(&format!("^(?:{pattern})$"))
                .map(Matcher::Regex)
                .map_err(|e| config_error(key, format!("`{pattern}` is not a regex this implementation reads: {e}"))),
        }
    }
}

enum Matcher<'a> {
    List(&'a [String]),
    Regex(Regex),
}

impl Matcher<'_> {
    fn matches(&self, module: &str) -> bool {
        match self {
            Matcher::List(entries) => entries.iter().any(|entry| entry_matches(entry, module)),
            Matcher::Regex(re) => re.is_match(module),
        }
    }
}

/// PEFT's rule for one list entry: the full name, or a suffix that starts at a `.`.
fn entry_matches(entry: &str, module: &str) -> bool {
    module.strip_suffix(entry).is_some_and(|head| head.is_empty() || head.ends_with('.'))
}

fn config_error(key: &str, reason: String) -> PolicyError {
    PolicyError::Config { path: ADAPTER_CONFIG.into(), key: key.into(), reason }
}

/// Rank, scaling and targets; names as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: i64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: ModuleSet,
    /// Modules left without an adapter even where `target_modules` reaches them.
    pub exclude_modules: Option<ModuleSet>,
    /// Scale `alpha / √r` instead of `alpha / r` (rsLoRA).
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: ModuleSet::all_projections(),
            exclude_modules: None,
            use_rslora: false,
        }
    }
}

/// Keys of PEFT's `adapter_config.json` that are bookkeeping, or steer only how PEFT wraps a
/// model at run time, so any value loads the same adapter. Every key neither read by
/// [`LoraConfig::from_peft_file`] nor listed here must be unset (null, false or empty): an
/// option this loader does not know would otherwise be dropped without a word (aLoRA's
/// `alora_invocation_tokens` would apply the adapter to every token).
const PEFT_BOOKKEEPING: [&str; 9] = [
    "base_model_name_or_path",
    "revision",
    "peft_version",
    "task_type",
    "inference_mode",
    "auto_mapping",
    "runtime_config",
    // Read by PEFT only when `megatron_config` or `use_qalora` is set, which must be unset.
    "megatron_core",
    "qalora_group_size",
];

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
        self.target_modules.matcher("target_modules")?;
        if let Some(exclude) = &self.exclude_modules {
            exclude.matcher("exclude_modules")?;
        }
        Ok(())
    }

    /// Which of `projections` (full module names) get adapters. Every list entry must reach a
    /// projection and no target may reach a module this implementation cannot adapt, so that a
    /// config is never applied as less than it says.
    pub fn adapted(&self, projections: &[String]) -> Result<Vec<bool>> {
        self.validate()?;
        let targets = self.target_modules.matcher("target_modules")?;
        let exclude = self.exclude_modules.as_ref().map(|m| m.matcher("exclude_modules")).transpose()?;
        let excluded = |module: &str| exclude.as_ref().is_some_and(|m| m.matches(module));
        if let Some(module) = UNADAPTABLE.iter().find(|m| targets.matches(m) && !excluded(m)) {
            return Err(config_error("target_modules", format!("reaches `{module}`, which this implementation cannot adapt")));
        }
        if let ModuleSet::List(entries) = &self.target_modules {
            if let Some(entry) = entries.iter().find(|e| !projections.iter().any(|m| entry_matches(e, m))) {
                return Err(config_error(
                    "target_modules",
                    format!("`{entry}` names no projection of this model ({})", ALL_PROJECTIONS.join(", ")),
                ));
            }
        }
        let adapted: Vec<bool> = projections.iter().map(|m| targets.matches(m) && !excluded(m)).collect();
        if !adapted.contains(&true) {
            return Err(config_error("target_modules", "leaves no projection of this model with an adapter".into()));
        }
        Ok(adapted)
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
            "target_modules": self.target_modules.to_json(),
            "exclude_modules": self.exclude_modules.as_ref().map(ModuleSet::to_json),
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
        // The keys this function reads and checks; the rest are bookkeeping or must be unset.
        const READ: [&str; 15] = [
            "peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "use_rslora",
            "init_lora_weights", "use_dora", "fan_in_fan_out", "bias", "rank_pattern", "alpha_pattern",
            "layers_to_transform", "modules_to_save",
        ];
        let unset = |x: &Value| match x {
            Value::Null | Value::Bool(false) => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Bool(true) | Value::Number(_) => false,
        };
        let mut keys: Vec<&String> = v.keys().collect();
        keys.sort();
        let known = |k: &str| READ.contains(&k) || PEFT_BOOKKEEPING.contains(&k);
        if let Some(key) = keys.into_iter().find(|k| !known(k) && !unset(&v[*k])) {
            return Err(bad(key, &format!("{} is not supported: this loader knows only the default", v[key])));
        }
        // Gaussian or Kaiming A, zero B: the adapter alone is the update. PiSSA, OLoRA, LoftQ and
        // CorDA also rewrite the base weights, which loading the adapter here would not repeat.
        if get("init_lora_weights").is_some_and(|x| !x.is_boolean() && x.as_str() != Some("gaussian")) {
            let reason = "only true, false and \"gaussian\" are supported (the others change the base weights)";
            return Err(bad("init_lora_weights", reason));
        }
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
        let module_set = |key: &str| -> Result<Option<ModuleSet>> {
            match get(key) {
                None => Ok(None),
                // PEFT expands this before saving; a hand-written config may still hold it.
                Some(Value::String(s)) if s == "all-linear" => Ok(Some(ModuleSet::all_projections())),
                Some(Value::String(s)) => Ok(Some(ModuleSet::Regex(s.clone()))),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|t| t.as_str().map(String::from).ok_or_else(|| bad(key, &format!("entry {t} is not a module name"))))
                    .collect::<Result<_>>()
                    .map(|names| Some(ModuleSet::List(names))),
                Some(_) => Err(bad(key, "must be a list of module names or a regex")),
            }
        };
        let targets = module_set("target_modules")?.ok_or_else(|| bad("target_modules", "missing"))?;
        let cfg = LoraConfig {
            r: get("r").and_then(Value::as_i64).ok_or_else(|| bad("r", "missing or not an integer"))?,
            lora_alpha: get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("lora_alpha", "missing or not a number"))?,
            lora_dropout: get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            target_modules: targets,
            exclude_modules: module_set("exclude_modules")?.filter(|m| !m.is_empty()),
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

/// Adapters made for a model but not yet attached to it, one per projection in layer order.
struct Fresh {
    vs: nn::VarStore,
    adapters: Vec<Option<LoraAdapter>>,
}

impl DreamModel {
    /// Attaches fresh adapters (B = 0: the model's outputs are unchanged) and freezes the base.
    pub fn attach_lora(&mut self, config: LoraConfig, seed: i64) -> Result<()> {
        let fresh = self.fresh_lora(&config, seed)?;
        self.install_lora(config, fresh);
        Ok(())
    }

    /// Loads a PEFT adapter folder onto this model. The adapters are attached only once their
    /// weights have loaded: a failed load leaves the model as it was, not with fresh adapters on.
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(ADAPTER_CONFIG);
        let config = LoraConfig::from_peft_file(&path)?;
        // Matching happens against the model, after parsing: name the file in those errors too.
        let fresh = self.fresh_lora(&config, 0).map_err(|e| match e {
            PolicyError::Config { key, reason, .. } => PolicyError::Config { path: path.clone(), key, reason },
            other => other,
        })?;
        load_named(&[dir.join(ADAPTER_WEIGHTS)], &fresh.vs.variables(), &|_| false)?;
        self.install_lora(config, fresh);
        Ok(())
    }

    /// Adapters (A Kaiming-uniform, B = 0) for the projections `config` selects, layer by layer.
    fn fresh_lora(&self, config: &LoraConfig, seed: i64) -> Result<Fresh> {
        if self.lora.is_some() {
            return Err(PolicyError::Invalid("LoRA adapters are already attached".into()));
        }
        let modules: Vec<(String, &Linear)> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| layer.linears().map(move |(name, lin)| (format!("model.layers.{i}.{name}"), lin)))
            .collect();
        let names: Vec<String> = modules.iter().map(|(name, _)| name.clone()).collect();
        let selected = config.adapted(&names)?;
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(self.placement.device);
        let root = vs.root();
        let (r, scale, dropout) = (config.r, config.scale(), config.lora_dropout);
        let adapters = modules
            .iter()
            .zip(selected)
            .map(|((module, linear), selected)| {
                selected.then(|| {
                    let (out_dim, in_dim) = (linear.weight.size()[0], linear.weight.size()[1]);
                    let bound = 1.0 / (in_dim as f64).sqrt();
                    let a = Tensor::empty([r, in_dim], (Kind::Float, self.placement.device)).uniform_(-bound, bound);
                    let b = Tensor::zeros([out_dim, r], (Kind::Float, self.placement.device));
                    let a = peft_path(&root, module, "lora_A").add("weight", a, true);
                    let b = peft_path(&root, module, "lora_B").add("weight", b, true);
                    LoraAdapter { a, b, scale, dropout }
                })
            })
            .collect();
        Ok(Fresh { vs, adapters })
    }

    fn install_lora(&mut self, config: LoraConfig, fresh: Fresh) {
        let mut adapters = fresh.adapters.into_iter();
        for layer in &mut self.layers {
            for (_, linear) in layer.linears_mut() {
                linear.lora = adapters.next().flatten();
            }
        }
        self.set_base_trainable(false);
        self.lora = Some(Lora { config, vs: fresh.vs });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::tiny_model;

    /// `adapter_config.json` as PEFT 0.21.2 saves it (`save_pretrained`), with `changes` applied.
    fn write_peft_config(dir: &Path, changes: Value) {
        let mut config = json!({
            "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null, "auto_mapping": null,
            "base_model_name_or_path": "base", "bias": "none", "corda_config": null, "ensure_weight_tying": false,
            "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": true,
            "init_lora_weights": true, "kasa_config": null, "layer_replication": null, "layers_pattern": null,
            "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false, "lora_dropout": 0.0,
            "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null,
            "monteclora_config": null, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 4,
            "rank_pattern": {}, "revision": null, "target_modules": ["v_proj", "q_proj"], "target_parameters": null,
            "task_type": "CAUSAL_LM", "trainable_token_indices": null, "use_bdlora": null, "use_dora": false,
            "use_qalora": false, "use_rslora": false, "velora_config": null
        });
        for (key, value) in changes.as_object().expect("an object of changes") {
            config[key] = value.clone();
        }
        std::fs::write(dir.join(ADAPTER_CONFIG), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }

    /// Which projections of each layer carry an adapter, as `layer.name` strings.
    fn adapted(model: &DreamModel) -> Vec<String> {
        let mut out = Vec::new();
        for (i, layer) in model.layers.iter().enumerate() {
            for (name, linear) in layer.linears() {
                if linear.lora.is_some() {
                    out.push(format!("{i}.{name}"));
                }
            }
        }
        out
    }

    /// Loads `changes` over PEFT's config onto a fresh 2-layer model, with the adapter weights
    /// the config asks for (saved from a model the same config was attached to); which
    /// projections got adapters.
    fn load(changes: Value) -> Result<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        write_peft_config(dir.path(), changes);
        let config = LoraConfig::from_peft_file(&dir.path().join(ADAPTER_CONFIG))?;
        let mut source = tiny_model(false, 1);
        source.attach_lora(config, 2)?;
        source.save_lora(dir.path(), None)?;
        write_peft_config(dir.path(), changes_again(dir.path()));
        let mut model = tiny_model(false, 1);
        model.load_lora(dir.path())?;
        Ok(adapted(&model))
    }

    /// The config `save_lora` wrote, as changes over PEFT's (so the file is in PEFT's shape again).
    fn changes_again(dir: &Path) -> Value {
        let ours: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap()).unwrap();
        json!({ "target_modules": ours["target_modules"], "exclude_modules": ours["exclude_modules"] })
    }

    fn config_key(err: PolicyError) -> String {
        match err {
            PolicyError::Config { path, key, reason } => {
                assert!(path.ends_with(ADAPTER_CONFIG), "{}", path.display());
                format!("{key}: {reason}")
            }
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn peft_target_lists_match_full_names_and_dotted_suffixes_per_layer() {
        // "all-linear" as PEFT 0.21 saves it: every projection by its full name.
        let all: Vec<String> = (0..2)
            .flat_map(|i| tiny_model(false, 1).layers[0].linears().map(|(name, _)| format!("model.layers.{i}.{name}")))
            .collect();
        assert_eq!(load(json!({ "target_modules": all })).unwrap().len(), 14);
        let got = load(json!({ "target_modules": ["self_attn.q_proj"] })).unwrap();
        assert_eq!(got, ["0.self_attn.q_proj", "1.self_attn.q_proj"]);
        // A full name reaches its own layer only.
        let targets = json!(["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"]);
        assert_eq!(load(json!({ "target_modules": targets })).unwrap(), ["0.self_attn.q_proj", "1.mlp.down_proj"]);
        // A suffix matches at a `.` only, and an entry must reach something.
        let err = config_key(load(json!({ "target_modules": ["proj"] })).unwrap_err());
        assert!(err.starts_with("target_modules: `proj` names no projection"), "{err}");
        let err = config_key(load(json!({ "target_modules": ["q_proj", "lm_head"] })).unwrap_err());
        assert!(err.contains("lm_head"), "{err}");
    }

    #[test]
    fn a_peft_target_string_is_a_regex_over_the_whole_name() {
        let got = load(json!({ "target_modules": ".*\\.(q_proj|v_proj)" })).unwrap();
        assert_eq!(got, ["0.self_attn.q_proj", "0.self_attn.v_proj", "1.self_attn.q_proj", "1.self_attn.v_proj"]);
        assert_eq!(load(json!({ "target_modules": "model\\.layers\\.1\\..*_proj" })).unwrap().len(), 7);
        // `re.fullmatch`: a pattern that only occurs inside the name matches nothing.
        let err = config_key(load(json!({ "target_modules": "q_proj" })).unwrap_err());
        assert!(err.starts_with("target_modules: leaves no projection"), "{err}");
        let err = config_key(load(json!({ "target_modules": ".*" })).unwrap_err());
        assert!(err.contains("model.embed_tokens"), "{err}");
        let err = config_key(load(json!({ "target_modules": "(q_proj" })).unwrap_err());
        assert!(err.starts_with("target_modules: `(q_proj` is not a regex"), "{err}");
    }

    #[test]
    fn exclude_modules_takes_out_what_it_matches() {
        let got = load(json!({ "target_modules": ["q_proj"], "exclude_modules": ["model.layers.0.self_attn.q_proj"] }));
        assert_eq!(got.unwrap(), ["1.self_attn.q_proj"]);
        let got = load(json!({ "target_modules": ".*_proj", "exclude_modules": ".*\\.mlp\\..*" }));
        assert_eq!(got.unwrap().len(), 8);
        // A target that reaches the head is usable once the head is excluded.
        let got = load(json!({ "target_modules": "model\\.layers.*|lm_head", "exclude_modules": ["lm_head"] }));
        assert_eq!(got.unwrap().len(), 14);
    }

    #[test]
    fn peft_options_this_loader_does_not_know_are_refused_by_name() {
        for (key, value) in [
            ("alora_invocation_tokens", json!([257, 10])),
            ("layer_replication", json!([[0, 1], [0, 2]])),
            ("target_parameters", json!(["mlp.experts.gate_up_proj"])),
            ("trainable_token_indices", json!([5, 7])),
            ("use_qalora", json!(true)),
            ("loftq_config", json!({ "loftq_bits": 4 })),
            ("some_future_option", json!(3)),
            ("init_lora_weights", json!("pissa")),
        ] {
            let dir = tempfile::tempdir().unwrap();
            write_peft_config(dir.path(), json!({ key: value }));
            let err = config_key(LoraConfig::from_peft_file(&dir.path().join(ADAPTER_CONFIG)).unwrap_err());
            assert!(err.starts_with(&format!("{key}: ")), "{key}: {err}");
        }
        // Unset options and bookkeeping load.
        let dir = tempfile::tempdir().unwrap();
        let changes = json!({ "target_parameters": [], "peft_version": "0.9.0", "init_lora_weights": "gaussian" });
        write_peft_config(dir.path(), changes);
        LoraConfig::from_peft_file(&dir.path().join(ADAPTER_CONFIG)).unwrap();
    }

    #[test]
    fn a_failed_load_leaves_no_adapters_attached() {
        let dir = tempfile::tempdir().unwrap();
        write_peft_config(dir.path(), json!({}));
        let mut model = tiny_model(false, 1);
        assert!(model.load_lora(dir.path()).is_err(), "no adapter_model.safetensors");
        assert!(model.lora.is_none() && adapted(&model).is_empty());
        assert!(model.vs.trainable_variables().iter().all(|v| v.requires_grad()), "the base is not frozen");
        // Weights of another rank: also refused, also nothing attached; then the right ones load.
        let mut other = tiny_model(false, 1);
        let targets = ModuleSet::List(vec!["q_proj".into(), "v_proj".into()]);
        other.attach_lora(LoraConfig { r: 2, target_modules: targets, ..LoraConfig::default() }, 3).unwrap();
        other.save_lora(dir.path(), None).unwrap();
        write_peft_config(dir.path(), json!({}));
        assert!(model.load_lora(dir.path()).is_err(), "rank 2 weights for a rank 4 config");
        assert!(model.lora.is_none() && adapted(&model).is_empty());
        write_peft_config(dir.path(), json!({ "r": 2 }));
        model.load_lora(dir.path()).unwrap();
        assert_eq!(adapted(&model).len(), 4);
    }
}
