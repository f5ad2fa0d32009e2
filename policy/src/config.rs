//! The model's shape and special tokens, read from a Hugging Face `config.json` (Qwen2 and Dream
//! fields, transformers 4 and 5 spellings) plus `generation_config.json` when present.
//!
//! Values this implementation does not support (a RoPE scaling type, sliding-window attention,
//! an activation other than SiLU, attention dropout) are errors that name the key; keys it does
//! not know are kept, written back on save, and listed in [`ModelConfig::ignored_keys`] so the
//! caller can warn about them.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{read_json, PolicyError, Result};

/// Position scaling applied before the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' `"linear"`).
    Linear { factor: f64 },
}

/// Token ids the diffusion process and the decoder need; taken from the checkpoint, never assumed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpecialTokens {
    /// The `[MASK]` token noised positions are replaced with (Dream: 151666).
    pub mask: Option<i64>,
    /// What the canvas is filled with after the answer (Dream: 151643, the same as eos).
    pub pad: Option<i64>,
    /// End-of-sequence ids (`eos_token_id` may be a list in Hugging Face configs).
    pub eos: Vec<i64>,
    pub bos: Option<i64>,
}

/// A Qwen2-architecture model configuration. Field names follow `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub model_type: String,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Standard deviation of the random initialisation (`dllm-rl model init`).
    pub initializer_range: f64,
    /// The hidden state at position i-1 predicts token i (Dream, DiffuCoder: models adapted from
    /// an autoregressive checkpoint keep its head alignment). `false` for LLaDA-style models.
    /// Not a transformers key; read from `logit_shift` when present, default true.
    pub logit_shift: bool,
    pub tokens: SpecialTokens,
    /// Keys present in the file that this implementation does not read.
    pub ignored_keys: Vec<String>,
    /// The file as read, so that a save writes every key back.
    raw: Map<String, Value>,
    /// `generation_config.json` as read, written back on save.
    pub generation_config: Option<Map<String, Value>>,
}

/// Keys that carry no meaning for the computation (bookkeeping of transformers and the hub).
const METADATA_KEYS: &[&str] = &[
    "architectures",
    "auto_map",
    "transformers_version",
    "use_cache",
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "max_window_layers",
    "sliding_window",
];

impl ModelConfig {
    /// Reads `config.json` (and `generation_config.json` when present) from a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut cfg = Self::from_file(&dir.join("config.json"))?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let generation: Map<String, Value> = read_json(&gen_path)?;
            cfg.fill_tokens_from(&generation, &gen_path)?;
            cfg.generation_config = Some(generation);
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: Map<String, Value> = read_json(path)?;
        Self::from_map(raw, path)
    }

    /// Parses a configuration; `origin` is only used to name the file in errors.
    pub fn from_map(raw: Map<String, Value>, origin: &Path) -> Result<Self> {
        let r = Reader { map: &raw, path: origin };
        let model_type = r.string("model_type")?.unwrap_or_else(|| "qwen2".into());
        if !matches!(model_type.to_ascii_lowercase().as_str(), "qwen2" | "dream") {
            return Err(r.bad("model_type", format!("`{model_type}` is not a Qwen2-architecture model (qwen2, Dream)")));
        }
        let hidden_size = r.positive("hidden_size")?;
        let num_attention_heads = r.positive("num_attention_heads")?;
        let num_key_value_heads = r.opt_positive("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match r.opt_positive("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => return Err(r.bad("num_attention_heads", format!("does not divide hidden_size {hidden_size}"))),
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(r.bad("num_key_value_heads", format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}")));
        }
        if head_dim % 2 != 0 {
            return Err(r.bad("head_dim", format!("{head_dim} is odd; the rotary embedding needs pairs")));
        }
        if let Some(act) = r.string("hidden_act")? {
            if act != "silu" {
                return Err(r.bad("hidden_act", format!("`{act}` is not supported (only silu)")));
            }
        }
        if let Some(p) = r.opt_f64("attention_dropout")? {
            if p != 0.0 {
                return Err(r.bad("attention_dropout", format!("{p} is not supported (only 0)")));
            }
        }
        if r.opt_bool("use_sliding_window")? == Some(true) {
            return Err(r.bad("use_sliding_window", "sliding-window attention is not supported".into()));
        }
        if let Some(types) = raw.get("layer_types").and_then(Value::as_array) {
            if let Some(other) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                return Err(r.bad("layer_types", format!("{other} is not supported (only full_attention)")));
            }
        }
        let (rope_theta, rope_scaling) = r.rope()?;

        let mut cfg = ModelConfig {
            model_type,
            hidden_size,
            intermediate_size: r.positive("intermediate_size")?,
            num_hidden_layers: r.positive("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: r.positive("vocab_size")?,
            max_position_embeddings: r.opt_positive("max_position_embeddings")?.unwrap_or(32768),
            rms_norm_eps: r.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: r.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            initializer_range: r.opt_f64("initializer_range")?.unwrap_or(0.02),
            logit_shift: r.opt_bool("logit_shift")?.unwrap_or(true),
            tokens: SpecialTokens::default(),
            ignored_keys: Vec::new(),
            raw: Map::new(),
            generation_config: None,
        };
        cfg.fill_tokens_from(&raw, origin)?;
        cfg.ignored_keys = raw.keys().filter(|k| !Self::is_known(k)).cloned().collect();
        cfg.raw = raw;
        Ok(cfg)
    }

    fn is_known(key: &str) -> bool {
        const READ: &[&str] = &[
            "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
            "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
            "rope_parameters", "tie_word_embeddings", "initializer_range", "hidden_act",
            "attention_dropout", "use_sliding_window", "layer_types", "logit_shift",
            "mask_token_id", "pad_token_id", "eos_token_id", "bos_token_id",
        ];
        READ.contains(&key) || METADATA_KEYS.contains(&key)
    }

    /// Takes token ids that are still unknown from `map` (config.json first, then
    /// generation_config.json).
    fn fill_tokens_from(&mut self, map: &Map<String, Value>, path: &Path) -> Result<()> {
        let r = Reader { map, path };
        let t = &mut self.tokens;
        t.mask = t.mask.or(r.opt_token("mask_token_id")?);
        t.pad = t.pad.or(r.opt_token("pad_token_id")?);
        t.bos = t.bos.or(r.opt_token("bos_token_id")?);
        if t.eos.is_empty() {
            t.eos = match map.get("eos_token_id") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_i64().ok_or_else(|| r.bad("eos_token_id", format!("{v} is not a token id"))))
                    .collect::<Result<_>>()?,
                Some(_) => vec![r.opt_token("eos_token_id")?.unwrap_or_default()],
            };
        }
        Ok(())
    }

    /// The mask token, which every diffusion computation needs.
    pub fn mask_token_id(&self) -> Result<i64> {
        self.tokens.mask.ok_or_else(|| {
            PolicyError::Invalid(
                "the checkpoint names no `mask_token_id` (config.json or generation_config.json); \
                 a diffusion model needs one (Dream: 151666)"
                    .into(),
            )
        })
    }

    /// Query heads per key/value head (grouped-query attention).
    pub fn kv_groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters, counted from the shapes.
    pub fn parameter_count(&self) -> i64 {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim);
        let attention = h * q + q + 2 * (h * kv + kv) + q * h;
        let layer = attention + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// The configuration as `config.json`: every key that was read, with this struct's values
    /// written over it, so that a checkpoint saved from Rust loads in transformers.
    pub fn to_json(&self, dtype: &str) -> Value {
        let mut map = self.raw.clone();
        if map.is_empty() {
            map.insert("architectures".into(), serde_json::json!(["Qwen2ForCausalLM"]));
        }
        let rope_scaling = match self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => serde_json::json!({"type": "linear", "rope_type": "linear", "factor": factor}),
        };
        let fields = serde_json::json!({
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "use_sliding_window": false,
            "torch_dtype": dtype,
        });
        if let Value::Object(fields) = fields {
            map.extend(fields);
        }
        // transformers 5 reads rope_parameters before rope_theta; keep the two in agreement.
        if let Some(Value::Object(p)) = map.get_mut("rope_parameters") {
            p.insert("rope_theta".into(), self.rope_theta.into());
        }
        map.remove("dtype");
        if !self.logit_shift {
            map.insert("logit_shift".into(), false.into());
        }
        let t = &self.tokens;
        for (key, id) in [("mask_token_id", t.mask), ("pad_token_id", t.pad), ("bos_token_id", t.bos)] {
            if let Some(id) = id {
                map.insert(key.into(), id.into());
            }
        }
        match t.eos.as_slice() {
            [] => {}
            [one] => {
                map.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                map.insert("eos_token_id".into(), many.into());
            }
        }
        Value::Object(map)
    }
}

/// Typed access to one JSON object, with errors that name the file and the key.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Reader<'_> {
    fn bad(&self, key: &str, reason: String) -> PolicyError {
        PolicyError::Config { path: PathBuf::from(self.path), key: key.into(), reason }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn positive(&self, key: &str) -> Result<i64> {
        self.opt_positive(key)?.ok_or_else(|| self.bad(key, "missing".into()))
    }

    fn opt_positive(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.bad(key, format!("{v} is not a positive integer"))),
            },
        }
    }

    fn opt_token(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n)),
                _ => Err(self.bad(key, format!("{v} is not a token id"))),
            },
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.bad(key, format!("{v} is not a number"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.bad(key, format!("{v} is not true or false"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| self.bad(key, format!("{v} is not a string"))),
        }
    }

    /// `rope_theta` + `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
    fn rope(&self) -> Result<(f64, RopeScaling)> {
        let (key, params) = match (self.get("rope_parameters"), self.get("rope_scaling")) {
            (Some(p), _) => ("rope_parameters", Some(p)),
            (None, s) => ("rope_scaling", s),
        };
        let mut theta = self.opt_f64("rope_theta")?;
        let mut scaling = RopeScaling::None;
        if let Some(params) = params {
            let Some(params) = params.as_object() else {
                return Err(self.bad(key, format!("{params} is not an object")));
            };
            let inner = Reader { map: params, path: self.path };
            if let Some(t) = inner.opt_f64("rope_theta")? {
                theta = Some(t);
            }
            let kind = inner.string("rope_type")?.or(inner.string("type")?).unwrap_or_else(|| "default".into());
            scaling = match kind.as_str() {
                "default" => RopeScaling::None,
                "linear" => match inner.opt_f64("factor")? {
                    Some(factor) if factor > 0.0 => RopeScaling::Linear { factor },
                    _ => return Err(self.bad(&format!("{key}.factor"), "linear scaling needs a positive factor".into())),
                },
                other => {
                    return Err(self.bad(
                        &format!("{key}.rope_type"),
                        format!("`{other}` is not supported (default, linear)"),
                    ))
                }
            };
        }
        Ok((theta.unwrap_or(10_000.0), scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        let Value::Object(map) = v else { unreachable!() };
        ModelConfig::from_map(map, Path::new("config.json"))
    }

    fn dream_7b() -> Value {
        json!({
            "architectures": ["DreamModel"], "model_type": "Dream", "hidden_act": "silu",
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": null, "tie_word_embeddings": false, "mask_token_id": 151666,
            "pad_token_id": 151643, "eos_token_id": 151643, "bos_token_id": 151665,
            "attention_dropout": 0.0, "use_sliding_window": false, "sliding_window": null,
            "auto_map": {"AutoModel": "modeling_dream.DreamModel"}
        })
    }

    #[test]
    fn dream_coder_shape_and_tokens() {
        let cfg = parse(dream_7b()).unwrap();
        assert_eq!(cfg.head_dim, 128);
        assert_eq!(cfg.kv_groups(), 7);
        assert_eq!(cfg.tokens.mask, Some(151666));
        assert_eq!(cfg.tokens.eos, vec![151643]);
        assert!(cfg.logit_shift);
        assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);
        // 7.616 B parameters (rust_infra.md §2.2).
        assert_eq!(cfg.parameter_count() / 1_000_000, 7615);
    }

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let mut v = dream_7b();
        v["rope_theta"] = Value::Null;
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
        assert_eq!(parse(v).unwrap().rope_theta, 5e5);
    }

    #[test]
    fn unsupported_values_name_their_key() {
        let cases = [
            ("rope_scaling", json!({"type": "yarn", "factor": 4.0}), "rope_scaling.rope_type"),
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("use_sliding_window", json!(true), "use_sliding_window"),
            ("num_key_value_heads", json!(5), "num_key_value_heads"),
            ("hidden_size", json!(-3), "hidden_size"),
            ("model_type", json!("llama"), "model_type"),
            ("eos_token_id", json!([1, "x"]), "eos_token_id"),
        ];
        for (key, value, named) in cases {
            let mut v = dream_7b();
            v[key] = value;
            match parse(v) {
                Err(PolicyError::Config { key, .. }) => assert_eq!(key, named),
                other => panic!("{key}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_listed_and_written_back() {
        let mut v = dream_7b();
        v["my_extra"] = json!(7);
        let cfg = parse(v).unwrap();
        assert_eq!(cfg.ignored_keys, vec!["my_extra".to_string()]);
        let out = cfg.to_json("float32");
        assert_eq!(out["my_extra"], 7);
        assert_eq!(out["mask_token_id"], 151666);
        let back = parse(out).unwrap();
        assert_eq!(back.hidden_size, 3584);
        assert_eq!(back.tokens, cfg.tokens);
    }
}
