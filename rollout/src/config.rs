//! Sampler settings, named as in Dream's `diffusion_generate` and Fast-dLLM, with defaults from
//! Dream-Coder's RL rollouts (`../shared/research/dllm_rl.md` §3.3): 768 new tokens in 768
//! steps, temperature 1.0, top-p 0.95, entropy order, blocks of 32 with the prefix cache.

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
#[serde(deny_unknown_fields, default)]
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
    /// `None`: one block over the whole canvas and no cache (Dream's plain sampler).
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

    /// Checks every value; errors name the key (as in a TOML `[rollout]` section).
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
    }
}
