//! The sampler's mechanics on a tiny random model: schedule, independence of rows, equalities
//! between configurations that must agree.

use dllm_policy::{DreamModel, Init, ModelConfig, Placement};
use dllm_rollout::schedule::per_step_commits;
use dllm_rollout::{build_canvas, sample, Alg, BlockConfig, CacheMode, Decoded, Quota, SamplerConfig, SpecialIds};
use tch::{Device, Kind, Tensor};

fn tiny() -> DreamModel {
    let json = serde_json::json!({
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
        "mask_token_id": 49, "pad_token_id": 0, "eos_token_id": 0, "initializer_range": 0.3
    });
    let serde_json::Value::Object(map) = json else { unreachable!() };
    let config = ModelConfig::from_map(map, std::path::Path::new("tiny.json")).unwrap();
    DreamModel::new(config, Placement::cpu(), Init::Random { seed: 11 }).unwrap()
}

fn special(model: &DreamModel) -> SpecialIds {
    SpecialIds::from_config(&model.config, &[]).unwrap()
}

fn run(model: &DreamModel, cfg: &SamplerConfig, prompts: &[&[i64]], seeds: &[u64]) -> Decoded {
    let canvas = build_canvas(prompts, cfg.max_new_tokens, &special(model), Device::Cpu).unwrap();
    sample(model, cfg, &canvas, seeds, &special(model)).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let n = t.size()[1] as usize;
    let flat: Vec<i64> = Vec::try_from(&t.contiguous().view([-1])).unwrap();
    flat.chunks(n).map(<[i64]>::to_vec).collect()
}

const PROMPT: &[i64] = &[5, 6, 7, 8];

fn configs() -> Vec<(&'static str, SamplerConfig)> {
    let base = SamplerConfig { max_new_tokens: 16, steps: 16, early_stop: false, ..SamplerConfig::default() };
    let block = |cache, threshold| Some(BlockConfig { length: 8, cache, threshold });
    vec![
        ("plain entropy", SamplerConfig { block: None, ..base.clone() }),
        ("plain maskgit", SamplerConfig { block: None, alg: Alg::MaskgitPlus, ..base.clone() }),
        ("plain margin", SamplerConfig { block: None, alg: Alg::TopkMargin, ..base.clone() }),
        ("plain origin", SamplerConfig { block: None, alg: Alg::Origin, ..base.clone() }),
        ("plain alg_temp", SamplerConfig { block: None, alg_temp: 0.5, ..base.clone() }),
        ("block", SamplerConfig { block: block(CacheMode::None, None), ..base.clone() }),
        ("prefix cache", SamplerConfig { block: block(CacheMode::Prefix, None), ..base.clone() }),
        ("dual cache", SamplerConfig { block: block(CacheMode::Dual, None), ..base.clone() }),
        ("threshold", SamplerConfig { block: block(CacheMode::Prefix, Some(0.3)), ..base.clone() }),
    ]
}

#[test]
fn every_configuration_fills_the_canvas_and_keeps_the_prompt() {
    let model = tiny();
    // Greedy decoding included: this random model's favourite token is often the mask itself,
    // which must never be proposed.
    for (name, cfg) in configs().into_iter().flat_map(|(n, c)| [(n, c.clone()), (n, SamplerConfig { temperature: 0.0, ..c })]) {
        let out = run(&model, &cfg, &[PROMPT, PROMPT], &[1, 2]);
        let ids = rows(&out.ids);
        for row in &ids {
            assert_eq!(&row[..4], PROMPT, "{name}");
            assert!(row[4..].iter().all(|&t| t != 49), "{name}: masks left: {row:?}");
        }
        let steps = rows(&out.step_map);
        assert!(steps.iter().flatten().all(|&s| s >= 0 && s < out.forwards), "{name}: {steps:?}");
        if cfg.block.as_ref().and_then(|b| b.threshold).is_none() {
            assert_eq!(out.forwards, 16, "{name}: one forward per step");
        }
    }
}

#[test]
fn per_row_quota_follows_the_schedule() {
    let model = tiny();
    let cfg = SamplerConfig { block: None, steps: 10, ..configs()[0].1.clone() };
    let out = run(&model, &cfg, &[PROMPT], &[3]);
    let steps = &rows(&out.step_map)[0];
    let per_step: Vec<i64> = (0..10).map(|s| steps.iter().filter(|&&x| x == s).count() as i64).collect();
    assert_eq!(per_step, per_step_commits(16, 10, 1e-3));
}

#[test]
fn a_rows_rollout_depends_on_its_seed_not_its_batch() {
    let model = tiny();
    let other: &[i64] = &[9, 10, 11, 12];
    for (name, cfg) in configs() {
        if cfg.quota == Quota::BatchMean {
            continue;
        }
        let alone = run(&model, &cfg, &[PROMPT], &[42]);
        let batched = run(&model, &cfg, &[other, PROMPT, other], &[7, 42, 8]);
        assert_eq!(rows(&alone.ids)[0], rows(&batched.ids)[1], "{name}");
        assert_eq!(rows(&alone.step_map)[0], rows(&batched.step_map)[1], "{name}");
        let again = run(&model, &cfg, &[PROMPT], &[42]);
        assert!(again.ids.equal(&alone.ids), "{name}: replay");
        let reseeded = run(&model, &cfg, &[PROMPT], &[43]);
        assert!(!reseeded.ids.equal(&alone.ids) || !reseeded.step_map.equal(&alone.step_map), "{name}: seed matters");
    }
}

#[test]
fn one_block_without_cache_is_the_plain_sampler() {
    let model = tiny();
    for temperature in [0.0, 1.0] {
        let plain = SamplerConfig { block: None, temperature, ..configs()[0].1.clone() };
        let block = SamplerConfig { block: Some(BlockConfig { length: 16, cache: CacheMode::None, threshold: None }), ..plain.clone() };
        let (a, b) = (run(&model, &plain, &[PROMPT, PROMPT], &[1, 2]), run(&model, &block, &[PROMPT, PROMPT], &[1, 2]));
        assert!(a.ids.equal(&b.ids) && a.step_map.equal(&b.step_map), "temperature {temperature}");
    }
}

#[test]
fn caches_refreshed_every_step_equal_no_cache() {
    // One step per block: every step is a refresh, so the cached samplers compute exactly what
    // the uncached block sampler does.
    let model = tiny();
    let base = SamplerConfig { max_new_tokens: 16, steps: 2, early_stop: false, block: None, ..SamplerConfig::default() };
    let with = |cache| SamplerConfig { block: Some(BlockConfig { length: 8, cache, threshold: None }), ..base.clone() };
    let reference = run(&model, &with(CacheMode::None), &[PROMPT], &[5]);
    for cache in [CacheMode::Prefix, CacheMode::Dual] {
        let out = run(&model, &with(cache), &[PROMPT], &[5]);
        assert!(out.ids.equal(&reference.ids), "{cache:?}");
        assert_eq!(out.full_forwards, 2);
    }
    // With more steps per block the cached passes are cheaper: one full forward per block.
    let out = run(&model, &SamplerConfig { steps: 16, ..with(CacheMode::Prefix) }, &[PROMPT], &[5]);
    assert_eq!((out.forwards, out.full_forwards), (16, 2));
}

#[test]
fn threshold_one_commits_a_single_token_per_step() {
    let model = tiny();
    let cfg = SamplerConfig {
        max_new_tokens: 16,
        steps: 16,
        early_stop: false,
        block: Some(BlockConfig { length: 8, cache: CacheMode::Prefix, threshold: Some(1.0) }),
        ..SamplerConfig::default()
    };
    let out = run(&model, &cfg, &[PROMPT], &[9]);
    assert_eq!(out.forwards, 16);
    let mut steps = rows(&out.step_map)[0].clone();
    steps.sort();
    assert_eq!(steps, (0..16).collect::<Vec<i64>>());
    // A low threshold commits several tokens per step: fewer forwards.
    let low = SamplerConfig { block: Some(BlockConfig { threshold: Some(0.01), ..cfg.block.unwrap() }), ..cfg.clone() };
    assert!(run(&model, &low, &[PROMPT], &[9]).forwards < 16);
}

#[test]
fn left_padding_gives_each_prompt_what_it_gets_alone() {
    let model = tiny();
    let short: &[i64] = &[5, 6];
    let cfg = SamplerConfig { temperature: 0.0, ..configs()[6].1.clone() }; // prefix cache, greedy
    let alone = run(&model, &cfg, &[short], &[4]);
    let padded = run(&model, &cfg, &[PROMPT, short], &[3, 4]);
    assert!(padded.ids.get(1).narrow(0, 4, 16).equal(&alone.ids.get(0).narrow(0, 2, 16)));
}

#[test]
fn batch_mean_quota_is_clamped_to_each_rows_masks() {
    let model = tiny();
    let cfg = SamplerConfig { quota: Quota::BatchMean, ..configs()[0].1.clone() };
    let out = run(&model, &cfg, &[PROMPT, PROMPT, PROMPT], &[1, 2, 3]);
    assert_eq!(out.ids.eq(49).sum(Kind::Int64).int64_value(&[]), 0);
}


/// Fast-dLLM's rule: a threshold step commits the block's position whose proposed token is
/// most probable (then every one at or above the threshold; at 1.0, none besides). Checked by
/// recomputing, for each step, the model's probabilities on the canvas that step saw.
#[test]
fn threshold_decoding_commits_the_most_probable_position() {
    let model = tiny();
    let cfg = SamplerConfig {
        max_new_tokens: 16,
        steps: 16,
        temperature: 0.0,
        top_p: 1.0,
        early_stop: false,
        block: Some(BlockConfig { length: 8, cache: CacheMode::None, threshold: Some(1.0) }),
        ..SamplerConfig::default()
    };
    let out = run(&model, &cfg, &[PROMPT], &[5]);
    let (ids, steps) = (&rows(&out.ids)[0], &rows(&out.step_map)[0]);
    let p = PROMPT.len();
    for s in 0..out.forwards {
        let committed: Vec<usize> = (0..16).filter(|&j| steps[j] == s).collect();
        assert_eq!(committed.len(), 1, "step {s}: {steps:?}");
        let mut canvas = PROMPT.to_vec();
        canvas.extend((0..16).map(|j| if steps[j] < s { ids[p + j] } else { 49 }));
        let hidden = model.forward(&Tensor::from_slice(&canvas).view([1, -1]), None, dllm_policy::Pass::EVAL);
        let logits = model.logits(&hidden).index_fill(2, &Tensor::from_slice(&[49i64]), f64::NEG_INFINITY);
        let top: Vec<f32> = Vec::try_from(logits.softmax(-1, Kind::Float).amax(&[2i64][..], false).view([-1])).unwrap();
        let j = committed[0];
        let block = (j / 8) * 8..(j / 8) * 8 + 8;
        for k in block.filter(|&k| steps[k] >= s) {
            assert!(top[p + j] >= top[p + k] - 1e-6, "step {s}: committed {j} ({}), {k} is likelier ({})", top[p + j], top[p + k]);
        }
    }
}
