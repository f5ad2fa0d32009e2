//! LoRA dropout under layer recomputation. Alone in its own test binary (its own process):
//! the replay re-seeds libtorch's process-wide generator, so no other test may draw from it
//! at the same time, which parallel tests in one process would.

use dllm_policy::{BackwardOptions, DreamModel, Init, LoraConfig, ModelConfig, Pass, Placement, ScoredBatch};
use tch::{Device, Kind, Tensor};

fn adapter_grads(model: &DreamModel) -> Vec<Tensor> {
    let lora = model.lora.as_ref().expect("adapters attached");
    lora.vs
        .trainable_variables()
        .iter()
        .map(|v| {
            let g = v.grad();
            let copy = g.copy();
            let _ = g.detach().zero_();
            copy
        })
        .collect()
}

#[test]
fn lora_dropout_is_replayed_when_recomputing() {
    let json = serde_json::json!({
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
        "mask_token_id": 39, "initializer_range": 0.2
    });
    let serde_json::Value::Object(map) = json else { unreachable!() };
    let config = ModelConfig::from_map(map, std::path::Path::new("tiny.json")).unwrap();
    let mut model = DreamModel::new(config, Placement::cpu(), Init::Random { seed: 4 }).unwrap();
    let lora = LoraConfig { r: 2, lora_alpha: 4.0, lora_dropout: 0.5, ..LoraConfig::default() };
    model.attach_lora(lora, 5).unwrap();
    {
        let _guard = tch::no_grad_guard();
        for v in model.lora.as_ref().unwrap().vs.trainable_variables() {
            let _ = v.detach().normal_(0.0, 0.3);
        }
    }
    let ids = Tensor::randint_low(1, 39, [2, 8], (Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(8, (Kind::Int64, Device::Cpu)).ge(3).unsqueeze(0).repeat([2, 1]);
    let batch = ScoredBatch::new(&model, &ids, &mask, None).unwrap();
    let objective = |lp: &Tensor, _: i64| lp.sum(Kind::Float);
    let run = |recompute: bool| {
        tch::manual_seed(21);
        let options = BackwardOptions { recompute, head_chunk: Some(4) };
        let (lp, _) = model.backward_scored(&batch, Pass::TRAIN, options, &objective).unwrap();
        (lp, adapter_grads(&model))
    };
    // Same seed, with and without recomputation: with the per-layer seeds the no-grad pass and
    // the recomputed pass draw the same dropout masks, so the gradients are those of plain
    // autograd.
    let (lp_plain, plain) = run(false);
    let (lp_re, recomputed) = run(true);
    assert!(lp_plain.allclose(&lp_re, 1e-5, 1e-6, false));
    for (a, b) in plain.iter().zip(&recomputed) {
        assert!(a.allclose(b, 1e-4, 1e-6, false), "gradients differ by {}", (a - b).abs().max());
    }
    // And dropout is really on: another seed gives other log-probs.
    tch::manual_seed(22);
    let (lp_other, _) = model
        .backward_scored(&batch, Pass::TRAIN, BackwardOptions { recompute: true, head_chunk: None }, &objective)
        .unwrap();
    assert!(!lp_other.allclose(&lp_plain, 1e-4, 1e-4, false));
}
