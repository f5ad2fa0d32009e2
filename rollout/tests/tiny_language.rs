//! A model trained here, in a second, on a tiny language (four prompts, each with one fixed
//! answer followed by eos and padding), must reproduce it with every sampler configuration.
//! Random weights cannot show that a sampler decodes what a model knows; this can.

use std::path::PathBuf;
use std::sync::OnceLock;

use dllm_policy::{DreamModel, Init, ModelConfig, Pass, Placement, SaveOptions, ScoredBatch};
use dllm_rollout::{generate, Alg, Batching, BlockConfig, CacheMode, Request, SamplerConfig, SpecialIds};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

const MASK: i64 = 23;
const EOS: i64 = 0;
const N: i64 = 12;

/// Prompt `[1, task]` → answer (8 tokens), then eos and pad (= eos) to N tokens.
fn language() -> Vec<(Vec<i64>, Vec<i64>)> {
    let answers: [[i64; 8]; 4] = [
        [6, 7, 8, 9, 10, 11, 12, 13],
        [14, 15, 16, 6, 7, 8, 17, 18],
        [19, 20, 21, 22, 19, 20, 6, 7],
        [9, 9, 10, 10, 11, 11, 12, 12],
    ];
    answers
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let mut response = a.to_vec();
            response.resize(N as usize, EOS);
            (vec![1, 2 + k as i64], response)
        })
        .collect()
}

/// Trains once per test process and saves the checkpoint; each test loads it.
fn trained() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| train(&language()))
}

/// One prompt whose answer is one of two sequences, half the time each, then padding: the
/// answer's tokens are uncertain until one is chosen, the padding is certain from the start.
fn ambiguous() -> Vec<(Vec<i64>, Vec<i64>)> {
    let a = language();
    vec![(vec![1, 2], a[0].1.clone()), (vec![1, 2], a[1].1.clone())]
}

fn trained_ambiguous() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| train(&ambiguous()))
}

fn train(data: &[(Vec<i64>, Vec<i64>)]) -> PathBuf {
    {
        let json = serde_json::json!({
            "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 24,
            "mask_token_id": MASK, "pad_token_id": EOS, "eos_token_id": EOS, "bos_token_id": 1
        });
        let serde_json::Value::Object(map) = json else { unreachable!() };
        let config = ModelConfig::from_map(map, std::path::Path::new("tiny.json")).unwrap();
        let model = DreamModel::new(config, Placement::cpu(), Init::Random { seed: 1 }).unwrap();
        let mut opt = tch::nn::AdamW::default().build(&model.vs, 3e-3).unwrap();
        let rows: Vec<i64> = data.iter().flat_map(|(p, r)| p.iter().chain(r).copied()).collect();
        let all = Tensor::from_slice(&rows).view([data.len() as i64, 2 + N]);
        let response = Tensor::arange(2 + N, (Kind::Int64, Device::Cpu)).ge(2).unsqueeze(0);
        for _ in 0..300 {
            let pick = Tensor::randint(data.len() as i64, [32], (Kind::Int64, Device::Cpu));
            let sequences = all.index_select(0, &pick);
            let t = Tensor::rand([32, 1], (Kind::Float, Device::Cpu)) * 0.9 + 0.1;
            let mask = Tensor::rand([32, 2 + N], (Kind::Float, Device::Cpu)).lt_tensor(&t).logical_and(&response);
            let batch = ScoredBatch::new(&model, &sequences, &mask, None).unwrap();
            let loss = -model.score(&batch, Pass::TRAIN).unwrap().mean(Kind::Float);
            opt.backward_step(&loss);
        }
        let dir = tempfile::tempdir().unwrap().keep();
        model.save_pretrained(&dir, &SaveOptions { kind: Kind::Float, ..SaveOptions::default() }).unwrap();
        dir
    }
}

fn configs() -> Vec<(&'static str, SamplerConfig)> {
    let base = SamplerConfig { max_new_tokens: N, steps: N, temperature: 0.0, early_stop: false, ..SamplerConfig::default() };
    let block = |cache, threshold| Some(BlockConfig { length: 4, cache, threshold });
    vec![
        ("plain entropy", SamplerConfig { block: None, ..base.clone() }),
        ("plain maskgit_plus", SamplerConfig { block: None, alg: Alg::MaskgitPlus, ..base.clone() }),
        ("plain topk_margin", SamplerConfig { block: None, alg: Alg::TopkMargin, ..base.clone() }),
        ("plain origin", SamplerConfig { block: None, alg: Alg::Origin, ..base.clone() }),
        ("plain, half the steps", SamplerConfig { block: None, steps: N / 2, ..base.clone() }),
        ("plain, sampled at T=1", SamplerConfig { block: None, temperature: 1.0, top_p: 0.9, ..base.clone() }),
        ("blocks of 4", SamplerConfig { block: block(CacheMode::None, None), ..base.clone() }),
        ("prefix cache", SamplerConfig { block: block(CacheMode::Prefix, None), ..base.clone() }),
        ("dual cache", SamplerConfig { block: block(CacheMode::Dual, None), ..base.clone() }),
        ("threshold 0.9, prefix cache", SamplerConfig { block: block(CacheMode::Prefix, Some(0.9)), ..base.clone() }),
        ("threshold 0.9, dual cache", SamplerConfig { block: block(CacheMode::Dual, Some(0.9)), ..base.clone() }),
        ("early stop", SamplerConfig { block: None, early_stop: true, ..base.clone() }),
    ]
}

#[test]
fn every_sampler_reproduces_the_trained_language() {
    let model = DreamModel::load(trained(), Placement::cpu()).unwrap();
    let special = SpecialIds::from_config(&model.config, &[]).unwrap();
    let data = language();
    let requests: Vec<Request> = data.iter().map(|(p, _)| Request { prompt: p.clone(), seeds: vec![1, 2] }).collect();
    for (name, cfg) in configs() {
        let (rollouts, stats) = generate(&model, &cfg, &requests, &special, Batching::Bucket, 16, &mut |_, _, _| {}).unwrap();
        assert_eq!(rollouts.len(), 8);
        for r in &rollouts {
            let expected = &data[r.request].1;
            assert_eq!(r.completion(&special.stop), &expected[..8], "{name}: prompt {}", r.request);
            if !cfg.early_stop {
                assert_eq!(&r.response, expected, "{name}");
            }
        }
        if name.starts_with("threshold") {
            assert!(stats.forwards < N, "{name}: a confident model decodes several tokens per step ({} forwards)", stats.forwards);
        }
        if cfg.early_stop {
            assert!(stats.forwards < N, "{name}: early stop saves forwards ({})", stats.forwards);
        }
    }
}

#[test]
fn padded_batches_decode_what_buckets_decode() {
    let model = DreamModel::load(trained(), Placement::cpu()).unwrap();
    let special = SpecialIds::from_config(&model.config, &[]).unwrap();
    let data = language();
    // A longer prompt for task 0 (an extra leading token) makes lengths differ.
    let mut requests: Vec<Request> = data.iter().map(|(p, _)| Request { prompt: p.clone(), seeds: vec![3] }).collect();
    requests[0].prompt.insert(0, 1);
    let cfg = configs()[7].1.clone();
    let (bucketed, b_stats) = generate(&model, &cfg, &requests, &special, Batching::Bucket, 16, &mut |_, _, _| {}).unwrap();
    let (padded, p_stats) = generate(&model, &cfg, &requests, &special, Batching::Pad, 16, &mut |_, _, _| {}).unwrap();
    assert_eq!((b_stats.batches, p_stats.batches), (2, 1));
    for (b, p) in bucketed.iter().zip(&padded) {
        assert_eq!(b.response, p.response);
    }
}

#[test]
fn pad_penalty_writes_the_answer_before_its_padding() {
    let model = DreamModel::load(trained_ambiguous(), Placement::cpu()).unwrap();
    let special = SpecialIds::from_config(&model.config, &[]).unwrap();
    let requests = vec![Request { prompt: vec![1, 2], seeds: (0..8).collect() }];
    let base = SamplerConfig { block: None, ..configs()[0].1.clone() };
    let run = |cfg: &SamplerConfig| generate(&model, cfg, &requests, &special, Batching::Bucket, 16, &mut |_, _, _| {}).unwrap().0;
    let answer_first = |rollouts: &[dllm_rollout::Rollout]| {
        rollouts.iter().all(|r| r.step_map[..8].iter().max() < r.step_map[8..].iter().min())
    };
    // Without the penalty the certain padding is committed before the uncertain answer...
    let plain = run(&base);
    assert!(plain.iter().all(|r| r.step_map[8..].iter().min() < r.step_map[..8].iter().min()), "{:?}", plain[0].step_map);
    // ...with it, every answer is written first, and is still one of the two answers.
    let penalised = run(&SamplerConfig { pad_penalty: 100.0, ..base.clone() });
    assert!(answer_first(&penalised), "{:?}", penalised[0].step_map);
    let answers: Vec<Vec<i64>> = ambiguous().into_iter().map(|(_, r)| r).collect();
    assert!(penalised.iter().all(|r| answers.contains(&r.response)));
}
