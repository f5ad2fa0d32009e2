#!/usr/bin/env python3
"""Reference fixtures for the policy crate, made with Hugging Face transformers and PEFT.

Run by hand, in the venv made by scripts/reference/venv (transformers 5.23.0, PEFT 0.21.2, torch
2.11.0); the files it writes are committed, so CI needs no Python ML stack.

    .venv-ref/bin/python scripts/reference/qwen2_parity.py make [OUT]
        OUT defaults to policy/tests/data/qwen2-reference. Writes:
        model/           a tiny random Qwen2 checkpoint (fp32, non-zero biases), one file
        model-sharded/   the same weights in shards with an index, as save_pretrained shards
        adapter/         a PEFT LoRA adapter (r=4, all seven projections, random B)
        expected.safetensors
            input_ids (2, 12) int64, attention (2, 12) int64 (row 1 is left-padded by 3),
            logits (2, 12, V) fp32: Qwen2 with a bidirectional 4-D mask, shifted as Dream does
            (position i shows the logits of hidden state i-1, position 0 its own),
            logits_lora: the same with the adapter applied.

    .venv-ref/bin/python scripts/reference/qwen2_parity.py check DIR [ADAPTER]
        Loads a checkpoint saved by dllm-rl in transformers as Qwen2ForCausalLM and checks that
        no tensor is missing or unexpected and every weight equals the file's; with ADAPTER,
        loads that PEFT adapter on top and checks PEFT finds every adapter tensor.

The 4-D mask: m[b, 0, i, j] = 0 where a[b, i] and a[b, j] (or i == j), else the dtype's minimum;
transformers uses a 4-D mask as given, so attention is bidirectional, which is what Dream does.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "policy" / "tests" / "data" / "qwen2-reference"

CONFIG = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    initializer_range=0.15,  # large enough that logits spread (std ~1) and errors show
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=0,
    pad_token_id=0,
)
MASK_TOKEN_ID = 127


def bidirectional_mask(attention: torch.Tensor) -> torch.Tensor:
    a = attention.bool()
    allowed = a[:, None, :, None] & a[:, None, None, :]
    allowed |= torch.eye(a.shape[1], dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    return mask.masked_fill(~allowed, torch.finfo(torch.float32).min)


def shifted(logits: torch.Tensor) -> torch.Tensor:
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def make(out: Path) -> None:
    torch.manual_seed(0)
    config = Qwen2Config(**CONFIG)
    config.mask_token_id = MASK_TOKEN_ID
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        # Hugging Face initialises biases to 0 and norms to 1; perturb them so parity tests them.
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(out / "model")
    model.save_pretrained(out / "model-sharded", max_shard_size="40KB")

    input_ids = torch.randint(1, MASK_TOKEN_ID + 1, (2, 12))
    input_ids[0, 4] = MASK_TOKEN_ID
    attention = torch.ones(2, 12, dtype=torch.int64)
    attention[1, :3] = 0
    input_ids[1, :3] = 0
    mask = bidirectional_mask(attention)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        causal = model(input_ids=input_ids, attention_mask=attention).logits
    assert not torch.allclose(logits, causal, atol=1e-3), "the 4-D mask did not make attention bidirectional"

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    peft_model.save_pretrained(out / "adapter")
    with torch.no_grad():
        logits_lora = peft_model(input_ids=input_ids, attention_mask=mask).logits
    assert not torch.allclose(logits_lora, logits, atol=1e-3)

    save_file(
        {
            "input_ids": input_ids.contiguous(),
            "attention": attention.contiguous(),
            "logits": shifted(logits).contiguous(),
            "logits_lora": shifted(logits_lora).contiguous(),
        },
        str(out / "expected.safetensors"),
    )
    print(f"wrote {out}")


def check(model_dir: Path, adapter_dir: Path | None) -> None:
    model, info = Qwen2ForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info[key]}"
    files = sorted(model_dir.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        assert torch.equal(params[name].to(tensor.dtype), tensor), f"{name} differs after loading"
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        model(input_ids=ids)
    print(f"transformers loads {model_dir}: {len(state)} tensors, all equal")
    if adapter_dir is not None:
        from peft import PeftModel, get_peft_model_state_dict

        peft_model = PeftModel.from_pretrained(model, adapter_dir)
        saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
        loaded = get_peft_model_state_dict(peft_model)
        assert set(saved) == set(loaded), f"adapter names differ: {set(saved) ^ set(loaded)}"
        for name, tensor in saved.items():
            assert torch.equal(loaded[name].to(tensor.dtype), tensor), f"{name} differs"
        print(f"PEFT loads {adapter_dir}: {len(saved)} tensors, all equal")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "make":
        make(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT)
    elif len(sys.argv) >= 3 and sys.argv[1] == "check":
        check(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        sys.exit(__doc__)
