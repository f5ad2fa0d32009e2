//! Sampler settings, named as in Dream's `diffusion_generate` and Fast-dLLM, with defaults from
//! Dream-Coder's RL rollouts (`../shared/research/dllm_rl.md` §3.3): 768 new tokens in 768
//! steps, temperature 1.0, top-p 0.95, entropy order, blocks of 32 with the prefix cache.
//!
//! In TOML (`[rollout.sampler]` of a train config) the defaults a file leaves out follow the
//! values it sets: `steps` defaults to `max_new_tokens`, and the block length to
//! `min(32, max_new_tokens)`, so `max_new_tokens = 16` alone is a valid section. `block = "none"`
//! chooses Dream's plain sampler (one block over the whole canvas, no cache).

use serde::{Deserialize, Serialize};

use crate::error::{Result, RolloutError};

/// Which positions a step commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alg {
    /// Every masked position reveals independently with probability 1 - s/t (Dream's default).
    Origin,
    /// The most probable sampled tokens first.
    MaskgitPlus,
    /// The largest margin between the two most probable tokens first.
    TopkMargin,
    /// The lowest entropy first (Dream-Coder's choice).
    Entropy,
}

/// How many tokens a confidence-ordered step commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// `floor(m_b (1 - s/t))` for each row b with its own m_b masked tokens (the default: rows
    /// with different numbers of masks each follow the schedule).
    PerRow,
    /// `floor(mean_b m_b (1 - s/t))` for every row, as Dream's reference code computes it
    /// (clamped to each row's masks here; the reference can write past them).
    BatchMean,
}

/// Which keys and values a block step reuses (Fast-dLLM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Every step is a full forward.
    None,
    /// Positions before the block are cached; the block and everything after it recomputed.
    Prefix,
    /// Positions before and after the block are cached; only the block recomputed.
    Dual,
}

/// Block-wise (semi-autoregressive) decoding: blocks of `length` tokens left to right, each
/// decoded by diffusion; the cache is refreshed at the start of each block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub length: i64,
    #[serde(default = "default_cache")]
    pub cache: CacheMode,
    /// Confidence-aware parallel decoding: each step commits the most probable token of the
    /// block and every token whose probability reaches the threshold; steps are not fixed.
    #[serde(default)]
    pub threshold: Option<f64>,
}

fn default_cache() -> CacheMode {
    CacheMode::Prefix
}

/// Everything a sampler call needs besides the model and the prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SamplerToml")]
pub struct SamplerConfig {
    pub max_new_tokens: i64,
    /// Denoising steps in total (over all blocks).
    pub steps: i64,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: Option<i64>,
    pub alg: Alg,
    /// With > 0, positions are drawn from softmax(confidence / alg_temp) instead of top-k.
    pub alg_temp: f64,
    /// The last timestep (t runs from 1 to eps).
    pub eps: f64,
    pub quota: Quota,
    /// `None`: one block over the whole canvas and no cache (Dream's plain sampler); written
    /// `block = "none"` in TOML, where TOML has no null and a missing key means the default.
    #[serde(serialize_with = "serialize_block")]
    pub block: Option<BlockConfig>,
    /// Lowers the confidence of positions whose proposal is a stop token (pad/eos/`<|im_end|>`)
    /// by `pad_penalty x (1 - progress)`: answers are written before the padding that ends them.
    /// 0 (the default) is off, as in Dream-Coder's rollouts.
    pub pad_penalty: f64,
    /// Stop a row as soon as it has a stop token with no mask before it (the completion is then
    /// fixed): its remaining masks become pad. Completions are unchanged; compute is saved.
    pub early_stop: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            max_new_tokens: 768,
            steps: 768,
            temperature: 1.0,
            top_p: 0.95,
            top_k: None,
            alg: Alg::Entropy,
            alg_temp: 0.0,
            eps: 1e-3,
            quota: Quota::PerRow,
            block: Some(BlockConfig { length: 32, cache: CacheMode::Prefix, threshold: None }),
            pad_penalty: 0.0,
            early_stop: true,
        }
    }
}

/// The block length a config gets when it names none (Dream-Coder's).
const DEFAULT_BLOCK_LENGTH: i64 = 32;

/// [`SamplerConfig`] as a file writes it: `None` is a key the file leaves out, so that the
/// defaults of `steps` and `block` can follow `max_new_tokens` (a file that sets only
/// `max_new_tokens = 16` would otherwise fail on 32-token blocks it never asked for).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplerToml {
    max_new_tokens: Option<i64>,
    steps: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    alg: Option<Alg>,
    alg_temp: Option<f64>,
    eps: Option<f64>,
    quota: Option<Quota>,
    /// Outer `None`: not in the file; `Some(None)`: `block = "none"`.
    #[serde(default, deserialize_with = "deserialize_block")]
    block: Option<Option<BlockConfig>>,
    pad_penalty: Option<f64>,
    early_stop: Option<bool>,
}

impl TryFrom<SamplerToml> for SamplerConfig {
    type Error = String;

    fn try_from(t: SamplerToml) -> Result<Self, String> {
        let d = SamplerConfig::default();
        let max_new_tokens = t.max_new_tokens.unwrap_or(d.max_new_tokens);
        let block = match t.block {
            Some(block) => block,
            None => {
                let length = DEFAULT_BLOCK_LENGTH.min(max_new_tokens);
                // Checked here, where it is known that the user chose neither number's partner.
                if length > 0 && max_new_tokens % length != 0 {
                    return Err(format!(
                        "block.length defaults to {length}, which does not divide max_new_tokens = {max_new_tokens}: \
                         add a [rollout.sampler.block] table with a `length` that divides it, or set \
                         `block = \"none\"` for Dream's plain sampler (no blocks)"
                    ));
                }
                d.block.map(|b| BlockConfig { length, ..b })
            }
        };
        Ok(SamplerConfig {
            max_new_tokens,
            steps: t.steps.unwrap_or(max_new_tokens),
            temperature: t.temperature.unwrap_or(d.temperature),
            top_p: t.top_p.unwrap_or(d.top_p),
            top_k: t.top_k.or(d.top_k),
            alg: t.alg.unwrap_or(d.alg),
            alg_temp: t.alg_temp.unwrap_or(d.alg_temp),
            eps: t.eps.unwrap_or(d.eps),
            quota: t.quota.unwrap_or(d.quota),
            block,
            pad_penalty: t.pad_penalty.unwrap_or(d.pad_penalty),
            early_stop: t.early_stop.unwrap_or(d.early_stop),
        })
    }
}

/// `block`: a table, or the string `"none"`.
fn deserialize_block<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<BlockConfig>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<BlockConfig>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [block] table (length, cache, threshold) or \"none\" for Dream's plain sampler")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v == "none" { Ok(None) } else { Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)) }
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            // Through BlockConfig's own derive, so a misspelt key inside the table is still named.
            BlockConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Visitor).map(Some)
}

/// Writes `None` as `"none"`: a saved config (the run's `config.toml`) must read back as the
/// plain sampler, not as the default blocks an absent key gives.
fn serialize_block<S: serde::Serializer>(block: &Option<BlockConfig>, s: S) -> Result<S::Ok, S::Error> {
    match block {
        Some(b) => b.serialize(s),
        None => s.serialize_str("none"),
    }
}

impl SamplerConfig {
    /// Dream's plain `diffusion_generate`: no blocks, no cache.
    pub fn plain(max_new_tokens: i64, steps: i64) -> Self {
        SamplerConfig { max_new_tokens, steps, block: None, ..Self::default() }
    }

    /// Blocks of the canvas: (number, length).
    pub fn blocks(&self) -> (i64, i64) {
        match &self.block {
            Some(b) => (self.max_new_tokens / b.length, b.length),
            None => (1, self.max_new_tokens),
        }
    }

    /// Checks every value; errors name the key (as in a TOML `[rollout.sampler]` section).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(RolloutError::Config { key: key.into(), reason });
        if self.max_new_tokens < 1 {
            return bad("max_new_tokens", format!("{} is not positive", self.max_new_tokens));
        }
        if self.steps < 1 {
            return bad("steps", format!("{} is not positive", self.steps));
        }
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return bad("temperature", format!("{} is negative", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if let Some(k) = self.top_k {
            if k < 1 {
                return bad("top_k", format!("{k} is not positive"));
            }
        }
        if self.alg_temp.is_nan() || self.alg_temp < 0.0 {
            return bad("alg_temp", format!("{} is negative", self.alg_temp));
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad("eps", format!("{} is not in (0, 1)", self.eps));
        }
        if self.pad_penalty.is_nan() || self.pad_penalty < 0.0 {
            return bad("pad_penalty", format!("{} is negative", self.pad_penalty));
        }
        if let Some(block) = &self.block {
            if block.length < 1 || self.max_new_tokens % block.length != 0 {
                return bad(
                    "block.length",
                    format!("{} must be positive and divide max_new_tokens {}", block.length, self.max_new_tokens),
                );
            }
            let blocks = self.max_new_tokens / block.length;
            if block.threshold.is_none() && self.steps % blocks != 0 {
                return bad("steps", format!("{} is not a multiple of the {blocks} blocks", self.steps));
            }
            if let Some(t) = block.threshold {
                if !(t > 0.0 && t <= 1.0) {
                    return bad("block.threshold", format!("{t} is not in (0, 1]"));
                }
                if self.alg == Alg::Origin {
                    return bad("alg", "origin reveals at random; threshold decoding needs a confidence order".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_dream_coder_rollouts_and_validate() {
        let c = SamplerConfig::default();
        c.validate().unwrap();
        assert_eq!((c.max_new_tokens, c.steps, c.alg), (768, 768, Alg::Entropy));
        assert_eq!(c.blocks(), (24, 32));
        assert_eq!(SamplerConfig::plain(128, 64).blocks(), (1, 128));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(SamplerConfig, &str)> = vec![
            (SamplerConfig { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplerConfig { steps: 100, ..Default::default() }, "steps"),
            (SamplerConfig { max_new_tokens: 100, ..Default::default() }, "block.length"),
            (SamplerConfig { temperature: f64::NAN, ..Default::default() }, "temperature"),
            (
                SamplerConfig {
                    alg: Alg::Origin,
                    block: Some(BlockConfig { length: 32, cache: CacheMode::None, threshold: Some(0.9) }),
                    ..Default::default()
                },
                "alg",
            ),
        ];
        for (config, key) in cases {
            match config.validate() {
                Err(RolloutError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn toml_sections_parse_with_defaults_and_reject_unknown_keys() {
        let c: SamplerConfig = toml::from_str("steps = 64\nmax_new_tokens = 64\n[block]\nlength = 16\ncache = \"dual\"\n").unwrap();
        assert_eq!(c.blocks(), (4, 16));
        assert_eq!(c.block.unwrap().cache, CacheMode::Dual);
        assert_eq!(c.temperature, 1.0);
        let err = toml::from_str::<SamplerConfig>("stepz = 3").unwrap_err();
        assert!(err.to_string().contains("stepz"), "{err}");
        let err = toml::from_str::<SamplerConfig>("[block]\nlenght = 16\n").unwrap_err();
        assert!(err.to_string().contains("lenght"), "{err}");
    }

    #[test]
    fn defaults_a_file_leaves_out_follow_max_new_tokens() {
        // Only max_new_tokens: steps and the block length follow it (blocks of 32 cannot split 16).
        let c: SamplerConfig = toml::from_str("max_new_tokens = 16").unwrap();
        c.validate().unwrap();
        assert_eq!((c.steps, c.blocks()), (16, (1, 16)));
        let c: SamplerConfig = toml::from_str("max_new_tokens = 64\nsteps = 32").unwrap();
        assert_eq!((c.steps, c.blocks()), (32, (2, 32)));
        // A default that cannot divide says so, and how to choose.
        let err = toml::from_str::<SamplerConfig>("max_new_tokens = 100").unwrap_err().to_string();
        assert!(err.contains("block.length defaults to 32") && err.contains("block = \"none\""), "{err}");
        // Cache and threshold keep their defaults when only the length is given.
        let c: SamplerConfig = toml::from_str("max_new_tokens = 100\n[block]\nlength = 25").unwrap();
        assert_eq!(c.block, Some(BlockConfig { length: 25, cache: CacheMode::Prefix, threshold: None }));
    }

    #[test]
    fn block_none_is_the_plain_sampler_and_survives_a_round_trip() {
        let c: SamplerConfig = toml::from_str("max_new_tokens = 100\nblock = \"none\"").unwrap();
        c.validate().unwrap();
        assert_eq!((c.block, c.blocks()), (None, (1, 100)));
        // A saved config (the run's config.toml) reads back as it was, blocks or none.
        for config in [c, SamplerConfig::default()] {
            let text = toml::to_string(&config).unwrap();
            assert_eq!(toml::from_str::<SamplerConfig>(&text).unwrap(), config, "{text}");
        }
        let err = toml::from_str::<SamplerConfig>("block = \"off\"").unwrap_err().to_string();
        assert!(err.contains("\"none\""), "{err}");
    }
}
