//! The Dream architecture: a Qwen2 decoder with bidirectional attention, read top to bottom as
//! in the paper (rotary embedding, RMSNorm, linear with an optional LoRA adapter, attention,
//! SwiGLU MLP, decoder layer, the model), `forward` at the bottom.
//!
//! Differences from an autoregressive Qwen2, all from Dream's `modeling_dream.py`:
//! - attention is never causal; a padding mask is passed only when the batch has padding (with
//!   no mask, SDPA may use the flash kernel);
//! - logits are shifted: the hidden state at i-1 predicts token i (see [`crate::head`]);
//! - positions are `0..L` whatever the padding (RoPE is relative, and pads neither attend nor
//!   are attended, so the valid tokens see the same distances as with `cumsum(mask)-1`).
//!
//! Precision: weights are stored in `param_kind` and cast to `compute_kind` inside each op, so
//! fp32 master weights with bf16 compute need no second copy of the code. RMSNorm statistics and
//! the rotary tables are computed in fp32, as the reference does.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{PolicyError, Result};
use crate::lora::LoraAdapter;

/// How weights are created before a checkpoint is loaded into them.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Uninitialised storage, to be overwritten by a checkpoint.
    Empty,
    /// Hugging Face's initialisation (normal(0, initializer_range), zero biases, unit norms),
    /// from this seed.
    Random { seed: i64 },
}

/// Where the model lives and in which precision it stores and computes.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub device: Device,
    /// dtype of the stored weights (`Float` for master weights, `BFloat16` to halve memory).
    pub param_kind: Kind,
    /// dtype of activations and matrix products.
    pub compute_kind: Kind,
}

impl Placement {
    /// fp32 everywhere: CPU tests and reference parity.
    pub fn cpu() -> Self {
        Placement { device: Device::Cpu, param_kind: Kind::Float, compute_kind: Kind::Float }
    }

    /// bf16 weights and compute on the first GPU when there is one, else fp32 on the CPU.
    pub fn best_available() -> Self {
        if tch::Cuda::is_available() {
            Placement { device: Device::Cuda(0), param_kind: Kind::BFloat16, compute_kind: Kind::BFloat16 }
        } else {
            Self::cpu()
        }
    }
}

/// What one forward pass does beyond the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Training mode: LoRA dropout is applied.
    pub train: bool,
    /// LoRA adapters take part; off gives the base model (the reference policy, at no memory).
    pub adapters: bool,
}

impl Pass {
    pub const EVAL: Pass = Pass { train: false, adapters: true };
    pub const TRAIN: Pass = Pass { train: true, adapters: true };
    pub const BASE: Pass = Pass { train: false, adapters: false };
}

// --- rotary embedding -------------------------------------------------------------------------

/// RoPE in Qwen2's `rotate_half` layout: the first and second halves of each head are the pair,
/// not interleaved neighbours.
#[derive(Debug)]
pub struct RotaryEmbedding {
    inv_freq: Tensor, // (D/2,) fp32
    position_scale: f64,
}

impl RotaryEmbedding {
    fn new(cfg: &ModelConfig, device: Device) -> Self {
        let d = cfg.head_dim;
        let exponents = Tensor::arange_start_step(0, d, 2, (Kind::Float, device)) / d as f64;
        let inv_freq = Tensor::from(cfg.rope_theta).to_device(device).pow(&exponents).reciprocal();
        let position_scale = match cfg.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / factor,
        };
        RotaryEmbedding { inv_freq, position_scale }
    }

    /// `(cos, sin)`, each (L, D), computed in fp32 and cast to `kind`.
    pub fn tables(&self, len: i64, kind: Kind) -> (Tensor, Tensor) {
        self.tables_from(0, len, kind)
    }

    /// The tables for positions `start..start + len` (a region of a longer sequence).
    pub fn tables_from(&self, start: i64, len: i64, kind: Kind) -> (Tensor, Tensor) {
        let device = self.inv_freq.device();
        let positions = Tensor::arange_start(start, start + len, (Kind::Float, device)) * self.position_scale;
        let freqs = positions.outer(&self.inv_freq);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

// --- building blocks --------------------------------------------------------------------------

/// Root-mean-square norm; statistics in fp32, the scale applied in the activation dtype
/// (the order of Qwen2's `Qwen2RMSNorm`, which matters for bf16 parity).
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: &nn::Path, size: i64, eps: f64, init: Init) -> Self {
        let weight = match init {
            Init::Empty => p.add("weight", Tensor::empty([size], (p.kind(), p.device())), true),
            Init::Random { .. } => p.var("weight", &[size], nn::Init::Const(1.0)),
        };
        RmsNorm { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (variance + self.eps).rsqrt()).to_kind(x.kind());
        self.weight.to_kind(x.kind()) * normed
    }
}

/// `y = x Wᵀ + b`, plus `scale · dropout(x) Aᵀ Bᵀ` when a LoRA adapter is attached.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    fn new(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, init: Init, std: f64) -> Self {
        let weight = match init {
            Init::Empty => p.add("weight", Tensor::empty([out_dim, in_dim], (p.kind(), p.device())), true),
            Init::Random { .. } => p.var("weight", &[out_dim, in_dim], nn::Init::Randn { mean: 0.0, stdev: std }),
        };
        let bias = bias.then(|| match init {
            Init::Empty => p.add("bias", Tensor::empty([out_dim], (p.kind(), p.device())), true),
            Init::Random { .. } => p.var("bias", &[out_dim], nn::Init::Const(0.0)),
        });
        Linear { weight, bias, lora: None }
    }

    pub fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let kind = x.kind();
        let bias = self.bias.as_ref().map(|b| b.to_kind(kind));
        let y = x.linear(&self.weight.to_kind(kind), bias.as_ref());
        match (&self.lora, pass.adapters) {
            (Some(adapter), true) => y + adapter.forward(x, pass.train),
            _ => y,
        }
    }
}

/// Grouped-query self-attention, bidirectional; biases on q, k, v only.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: &nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        let (h, d, std) = (cfg.hidden_size, cfg.head_dim, cfg.initializer_range);
        let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        Attention {
            q_proj: Linear::new(&(p / "q_proj"), h, q, true, init, std),
            k_proj: Linear::new(&(p / "k_proj"), h, kv, true, init, std),
            v_proj: Linear::new(&(p / "v_proj"), h, kv, true, init, std),
            o_proj: Linear::new(&(p / "o_proj"), q, h, false, init, std),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        }
    }

    /// `x` (B, L, H); `mask` None or a (B, 1, L, Lk) bool "may attend" mask; `kv` says whether
    /// keys and values are recorded for a cache or taken from one.
    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: Option<&Tensor>, pass: Pass, kv: KvUse) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor, n: i64| t.view([b, l, n, self.head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(x, pass), self.heads); // (B, nh, L, D)
        let k = split(self.k_proj.forward(x, pass), self.kv_heads); // (B, nkv, L, D)
        let v = split(self.v_proj.forward(x, pass), self.kv_heads);
        let (q, k) = (apply_rotary(&q, &rope.0, &rope.1), apply_rotary(&k, &rope.0, &rope.1));
        let (k, v) = match kv {
            KvUse::Fresh => (k, v),
            KvUse::Record(slot) => {
                *slot = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v)
            }
            // The region's fresh keys and values overwrite their slice of the cached ones; the
            // queries then see the whole sequence (cached outside the region).
            KvUse::Region { keys, values, offset } => {
                keys.narrow(2, offset, l).copy_(&k);
                values.narrow(2, offset, l).copy_(&v);
                (keys.shallow_clone(), values.shallow_clone())
            }
        };
        let gqa = self.heads != self.kv_heads;
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, gqa);
        let o = o.transpose(1, 2).reshape([b, l, self.heads * self.head_dim]);
        self.o_proj.forward(&o, pass)
    }
}

/// How a layer's attention treats keys and values.
pub enum KvUse<'a> {
    /// Computed from the input and dropped (training, the plain sampler).
    Fresh,
    /// Computed and kept in the slot (the refresh pass of a cached sampler).
    Record(&'a mut Option<(Tensor, Tensor)>),
    /// The input is the region `offset..offset + R` of a longer sequence whose keys and values
    /// (B, nkv, L, D) are cached: the region's are written into them, the rest is reused.
    Region { keys: &'a Tensor, values: &'a Tensor, offset: i64 },
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn new(p: &nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        let (h, i, std) = (cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range);
        Mlp {
            gate_proj: Linear::new(&(p / "gate_proj"), h, i, false, init, std),
            up_proj: Linear::new(&(p / "up_proj"), h, i, false, init, std),
            down_proj: Linear::new(&(p / "down_proj"), i, h, false, init, std),
        }
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let gated = self.gate_proj.forward(x, pass).silu() * self.up_proj.forward(x, pass);
        self.down_proj.forward(&gated, pass)
    }
}

/// Pre-norm block: attention then MLP, each with a residual.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn new(p: &nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        DecoderLayer {
            input_layernorm: RmsNorm::new(&(p / "input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps, init),
            self_attn: Attention::new(&(p / "self_attn"), cfg, init),
            post_attention_layernorm: RmsNorm::new(&(p / "post_attention_layernorm"), cfg.hidden_size, cfg.rms_norm_eps, init),
            mlp: Mlp::new(&(p / "mlp"), cfg, init),
        }
    }

    pub fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: Option<&Tensor>, pass: Pass) -> Tensor {
        self.forward_kv(x, rope, mask, pass, KvUse::Fresh)
    }

    pub fn forward_kv(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: Option<&Tensor>, pass: Pass, kv: KvUse) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), rope, mask, pass, kv);
        let out = self.mlp.forward(&self.post_attention_layernorm.forward(&h), pass);
        h + out
    }

    /// Every linear projection of the block with its Hugging Face name below the layer.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }
}

// --- the model --------------------------------------------------------------------------------

/// A Dream-architecture masked-diffusion LM. Weights live in `vs` under their Hugging Face names
/// (`model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`, ...).
pub struct DreamModel {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    pub placement: Placement,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// The vocabulary head; the embedding matrix itself when `tie_word_embeddings`.
    pub lm_head: Tensor,
    pub rotary: RotaryEmbedding,
    /// LoRA adapters, when attached ([`DreamModel::attach_lora`]).
    pub lora: Option<crate::lora::Lora>,
}

impl DreamModel {
    pub fn new(config: ModelConfig, placement: Placement, init: Init) -> Result<Self> {
        if let Init::Random { seed } = init {
            tch::manual_seed(seed);
        }
        let mut vs = nn::VarStore::new(placement.device);
        vs.set_kind(placement.param_kind);
        let root = vs.root();
        let trunk = &root / "model";
        let cfg = &config;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let matrix = |p: &nn::Path, name: &str| match init {
            Init::Empty => p.add(name, Tensor::empty([v, h], (p.kind(), p.device())), true),
            Init::Random { .. } => p.var(name, &[v, h], nn::Init::Randn { mean: 0.0, stdev: cfg.initializer_range }),
        };
        let embed_tokens = matrix(&(&trunk / "embed_tokens"), "weight");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&(&trunk / "layers" / i), cfg, init))
            .collect();
        let norm = RmsNorm::new(&(&trunk / "norm"), h, cfg.rms_norm_eps, init);
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            matrix(&(&root / "lm_head"), "weight")
        };
        let rotary = RotaryEmbedding::new(cfg, placement.device);
        Ok(DreamModel { config, vs, placement, embed_tokens, layers, norm, lm_head, rotary, lora: None })
    }

    /// Loads a Hugging Face checkpoint folder (`config.json` + safetensors, single or sharded).
    pub fn load(dir: &Path, placement: Placement) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let model = Self::new(config, placement, Init::Empty)?;
        crate::checkpoint::load_weights(dir, &model.vs)?;
        Ok(model)
    }

    /// Freezes every base weight (LoRA training) or makes them all trainable again.
    pub fn set_base_trainable(&mut self, trainable: bool) {
        if trainable {
            self.vs.unfreeze()
        } else {
            self.vs.freeze()
        }
    }

    /// The (B, 1, L, L) "may attend" mask for a (B, L) 0/1 attention mask: valid tokens attend
    /// to valid tokens; a pad query attends to itself only, so that no row is all false (SDPA
    /// would return NaN there). `None` in, `None` out: no padding, no mask (the flash path).
    pub fn attention_mask(attention: Option<&Tensor>) -> Option<Tensor> {
        let a = attention?.to_kind(Kind::Bool);
        let l = a.size()[1];
        let pairs = a.unsqueeze(1).unsqueeze(-1).logical_and(&a.unsqueeze(1).unsqueeze(1));
        Some(pairs.logical_or(&Tensor::eye(l, (Kind::Bool, a.device()))))
    }

    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false).to_kind(self.placement.compute_kind)
    }

    /// Checks the ids before they reach an index kernel (an out-of-range id aborts the process
    /// in CUDA rather than returning an error).
    pub fn check_input(&self, input_ids: &Tensor) -> Result<()> {
        if input_ids.dim() != 2 || input_ids.kind() != Kind::Int64 {
            return Err(PolicyError::Invalid(format!(
                "input ids must be a (batch, length) int64 tensor, got {:?} {:?}",
                input_ids.size(),
                input_ids.kind()
            )));
        }
        if input_ids.numel() > 0 {
            let (lo, hi) = (input_ids.min().int64_value(&[]), input_ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.config.vocab_size {
                return Err(PolicyError::Invalid(format!(
                    "token id out of range: ids span {lo}..={hi}, vocabulary size is {}",
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// The trunk: (B, L) ids → (B, L, H) hidden states after the final norm, in `compute_kind`.
    /// `attention` is the (B, L) 0/1 padding mask, or `None` when the batch has no padding.
    pub fn forward(&self, input_ids: &Tensor, attention: Option<&Tensor>, pass: Pass) -> Tensor {
        let rope = self.rotary.tables(input_ids.size()[1], self.placement.compute_kind);
        let mask = Self::attention_mask(attention);
        let mut x = self.embed(input_ids);
        for layer in &self.layers {
            x = layer.forward(&x, &rope, mask.as_ref(), pass);
        }
        self.norm.forward(&x)
    }
}

/// Tiny random models for the tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// 2 layers, hidden 16, 4 query / 2 key-value heads, vocabulary 40 (mask = 39).
    pub fn tiny_config(tie: bool) -> ModelConfig {
        let json = serde_json::json!({
            "model_type": "Dream", "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 40, "tie_word_embeddings": tie, "rope_theta": 10000.0,
            "mask_token_id": 39, "pad_token_id": 0, "eos_token_id": 0, "initializer_range": 0.2
        });
        let serde_json::Value::Object(map) = json else { unreachable!() };
        ModelConfig::from_map(map, Path::new("tiny.json")).expect("tiny config")
    }

    pub fn tiny_model(tie: bool, seed: i64) -> DreamModel {
        let model = DreamModel::new(tiny_config(tie), Placement::cpu(), Init::Random { seed }).expect("tiny model");
        // Random biases and norms, so that tests exercise them.
        let _guard = tch::no_grad_guard();
        for (name, mut w) in model.named_weights() {
            if name.ends_with("bias") || name.contains("norm") {
                let noise = w.randn_like() * 0.1;
                let _ = w.f_add_(&noise);
            }
        }
        model
    }
}

#[cfg(test)]
mod tests {
    use super::testing::tiny_model;
    use super::*;

    #[test]
    fn a_left_padded_row_computes_what_the_row_alone_computes() {
        let model = tiny_model(false, 2);
        let ids = Tensor::randint_low(1, 39, [1, 12], (Kind::Int64, Device::Cpu));
        let pad = 4;
        let attention = Tensor::ones([1, 12], (Kind::Int64, Device::Cpu));
        let _ = attention.narrow(1, 0, pad).fill_(0);
        let padded = tch::no_grad(|| model.forward(&ids, Some(&attention), Pass::EVAL)).narrow(1, pad, 12 - pad);
        let alone = tch::no_grad(|| model.forward(&ids.narrow(1, pad, 12 - pad), None, Pass::EVAL));
        assert!(padded.allclose(&alone, 1e-5, 1e-6, false), "max |Δ| {}", (&padded - &alone).abs().max());
        // Without the mask the pads leak in: the test can tell.
        let leaky = tch::no_grad(|| model.forward(&ids, None, Pass::EVAL)).narrow(1, pad, 12 - pad);
        assert!(!leaky.allclose(&alone, 1e-3, 1e-3, false));
    }

    #[test]
    fn fresh_lora_adapters_change_nothing_until_trained() {
        let mut model = tiny_model(true, 3);
        let ids = Tensor::randint_low(1, 39, [2, 7], (Kind::Int64, Device::Cpu));
        let before = tch::no_grad(|| model.forward(&ids, None, Pass::EVAL));
        model.attach_lora(crate::LoraConfig::default(), 1).unwrap();
        let after = tch::no_grad(|| model.forward(&ids, None, Pass::EVAL));
        assert!(before.allclose(&after, 1e-6, 1e-6, false));
        assert!(model.vs.trainable_variables().iter().all(|v| !v.requires_grad()), "the base is frozen");
        let adapters = model.lora.as_ref().unwrap().vs.trainable_variables();
        assert_eq!(adapters.len(), 2 * 7 * 2, "A and B on seven projections of two layers");
        assert!(model.attach_lora(crate::LoraConfig::default(), 1).is_err(), "attaching twice is refused");
    }

    #[test]
    fn fp32_master_weights_with_bf16_compute_get_fp32_gradients() {
        let mut model = tiny_model(false, 4);
        model.placement.compute_kind = Kind::BFloat16;
        let ids = Tensor::randint_low(1, 39, [2, 6], (Kind::Int64, Device::Cpu));
        let hidden = model.forward(&ids, None, Pass::TRAIN);
        assert_eq!(hidden.kind(), Kind::BFloat16);
        hidden.to_kind(Kind::Float).square().mean(Kind::Float).backward();
        let q = &model.layers[0].self_attn.q_proj.weight;
        assert_eq!(q.kind(), Kind::Float);
        assert_eq!(q.grad().kind(), Kind::Float);
        assert!(q.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn out_of_range_ids_are_refused_before_any_kernel() {
        let model = tiny_model(false, 5);
        let err = model.check_input(&Tensor::from_slice(&[1i64, 40]).view([1, 2])).unwrap_err();
        assert!(err.to_string().contains("1..=40") && err.to_string().contains("40"), "{err}");
        assert!(model.check_input(&Tensor::from_slice(&[1i32, 2]).view([1, 2])).is_err());
    }
}
