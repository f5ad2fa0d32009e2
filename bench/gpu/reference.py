#!/usr/bin/env python3
"""The PyTorch reference of issue 20, run on the same card and checkpoint as ours.

Written from ../shared/research/dllm_rl.md §1-2 and §10 (the settings of the recorded H100
anchors), not copied from the published code: transformers' Qwen2 with bidirectional attention
(every layer's `is_causal` off, no mask: SDPA picks its flash kernel), bf16, and

  forward     one forward of B x L tokens, the head at every position (as the published code)
  plain       Dream's sampler: one full forward per step, shifted logits, top-p, negative-entropy
              confidence, floor(m * (1 - s/t)) tokens committed per step (m averaged over rows)
  prefix      Fast-dLLM's block sampler with the prefix cache: per block one refresh forward over
              the whole canvas, then forwards of x[block_start:] over the cached prefix K/V
  update      PEFT LoRA r=16 / alpha 32 on all seven projections, gradient checkpointing, the
              masked-token log-prob loss at 1,280 tokens: no-grad forward and forward+backward

    python3 bench/gpu/reference.py --model DIR --out OUT_DIR [--tiny]

`--tiny` shrinks every size so the script can be checked on a CPU.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def load(model_dir, device, dtype):
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    keep = {k: v for k, v in raw.items() if k not in ("architectures", "model_type", "auto_map")}
    config = Qwen2Config(**keep)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    loaded = set()
    for name in files:
        state = load_file(os.path.join(model_dir, name), device=str(device))
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            sys.exit(f"{name}: tensors Qwen2 does not have: {unexpected[:5]}")
        loaded.update(state)
        del state
    missing = [n for n, _ in model.named_parameters() if n not in loaded]
    if missing:
        sys.exit(f"checkpoint lacks {missing[:5]}")
    # The rotary table in float32, as a checkpoint load leaves it (the cast above made it bf16).
    rotary = model.model.rotary_emb
    rotary.inv_freq = rotary.compute_default_rope_parameters(config)[0].to(device)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    model.eval()
    return model, raw


# A dict mask bypasses transformers' causal-mask construction; with `is_causal` off on every
# layer SDPA then attends in both directions, as Dream's code does with the mask "full".
NO_MASK = {"full_attention": None}


def logits_of(model, x, cache=None):
    out = model(input_ids=x, attention_mask=NO_MASK, past_key_values=cache, use_cache=cache is not None)
    return out.logits, out.past_key_values


def shift(logits):
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def top_p_filter(logits, top_p):
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def propose(logits, temperature, top_p):
    """Sampled tokens and their negative-entropy confidence."""
    logits = logits.float() / temperature
    logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    tokens = torch.multinomial(probs, 1).squeeze(-1)
    confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, tokens


def commit(x, mask_index, confidence, tokens, k, allowed=None):
    if k <= 0:
        return
    full = torch.full(x.shape, -math.inf, device=x.device, dtype=torch.float32)
    full[mask_index] = confidence
    if allowed is not None:
        full[:, ~allowed] = -math.inf
    _, where = torch.topk(full, k, dim=-1)
    proposal = torch.full_like(x, -1)
    proposal[mask_index] = tokens
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(where)
    x[rows, where] = proposal[rows, where]


def plain_sampler(model, prompt, new_tokens, steps, mask_id, temperature, top_p, eps=1e-3):
    b = prompt.shape[0]
    x = torch.cat([prompt, torch.full((b, new_tokens), mask_id, device=prompt.device, dtype=prompt.dtype)], 1)
    times = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits, _ = logits_of(model, x)
        logits = shift(logits)[mask_index]
        confidence, tokens = propose(logits, temperature, top_p)
        t, s = times[i].item(), times[i + 1].item()
        m = mask_index.sum().item() / b
        k = int(m * (1 - s / t)) if i < steps - 1 else int(m)
        commit(x, mask_index, confidence, tokens, k)
    return x


def prefix_sampler(model, prompt, new_tokens, steps, block, mask_id, temperature, top_p, eps=1e-3):
    from transformers import DynamicCache

    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, new_tokens), mask_id, device=prompt.device, dtype=prompt.dtype)], 1)
    blocks = new_tokens // block
    per_block = steps // blocks
    times = torch.linspace(1, eps, per_block + 1)
    for n in range(blocks):
        start, end = p + n * block, p + (n + 1) * block
        # Refresh: one forward over the whole canvas; its K/V before the block become the cache,
        # and the first position of the block is committed from it.
        logits, cache = logits_of(model, x, DynamicCache(config=model.config))
        logits = shift(logits)
        mask_index = x == mask_id
        confidence, tokens = propose(logits[mask_index], temperature, top_p)
        proposal = torch.full_like(x, -1)
        proposal[mask_index] = tokens
        x[:, start] = proposal[:, start]
        prefix = [(layer.keys[:, :, :start], layer.values[:, :, :start]) for layer in cache.layers]
        allowed = torch.zeros(x.shape[1] - start, dtype=torch.bool, device=x.device)
        allowed[: end - start] = True
        for i in range(1, per_block):
            tail = x[:, start:]
            mask_index = tail == mask_id
            if not mask_index[:, : end - start].any():
                break
            cache = DynamicCache(ddp_cache_data=prefix, config=model.config)
            logits, _ = logits_of(model, tail, cache)
            logits = shift(logits)[mask_index]
            confidence, tokens = propose(logits, temperature, top_p)
            t, s = times[i].item(), times[i + 1].item()
            m = mask_index[:, : end - start].sum().item() / b
            k = int(m * (1 - s / t)) if i < per_block - 1 else int(m)
            commit(tail, mask_index, confidence, tokens, k, allowed)
            x[:, start:] = tail
    return x


def timed(device, fn, iters, warmup=1):
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device):
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def update_side(model, device, vocab, mask_id, sizes, prompt_len, response_len, iters):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    length = prompt_len + response_len
    rows = []

    def batch(b):
        target = torch.randint(0, vocab, (b, length), device=device)
        masked = torch.rand(b, response_len, device=device) < 0.5
        x = target.clone()
        x[:, prompt_len:][masked] = mask_id
        return x, target, masked

    def loss_of(x, target, masked):
        logits = shift(peft_model(input_ids=x, attention_mask=NO_MASK).logits)[:, prompt_len:]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, target[:, prompt_len:, None]).squeeze(-1)
        return -(logp * masked).sum() / masked.sum().clamp(min=1)

    for b in sizes:
        x, target, masked = batch(b)
        reset_peak(device)
        with torch.no_grad():
            forward = timed(device, lambda: loss_of(x, target, masked), iters)
        forward_peak = peak_gb(device)
        reset_peak(device)

        def step():
            loss_of(x, target, masked).backward()
            peft_model.zero_grad(set_to_none=True)

        backward = timed(device, step, iters)
        rows.append({"batch": b, "tokens": length, "no_grad_forward_s": forward, "forward_backward_s": backward,
                     "forward_peak_gb": forward_peak, "backward_peak_gb": peak_gb(device)})
        print(f"update B={b}: no-grad {forward:.3f} s, fwd+bwd {backward:.3f} s, peak {peak_gb(device):.1f} GB", flush=True)
    return trainable, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (dllm-rl model init)")
    ap.add_argument("--out", required=True, help="folder for reference.md and reference.json")
    ap.add_argument("--tiny", action="store_true", help="small sizes, to check the script on a CPU")
    ap.add_argument("--parts", default="forward,plain,prefix,update")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    if args.tiny:
        samples, prompt_len, new_tokens, steps, block, iters = 2, 16, 16, 16, 8, 2
        fwd_batch, fwd_len, up_sizes, up_prompt, up_response = 2, 32, [2], 16, 16
    else:
        samples, prompt_len, new_tokens, steps, block, iters = 16, 256, 128, 128, 32, 10
        fwd_batch, fwd_len, up_sizes, up_prompt, up_response = 16, 384, [16, 4], 512, 768
    t0 = time.perf_counter()
    model, raw = load(args.model, device, dtype)
    vocab, mask_id = raw["vocab_size"], raw.get("mask_token_id", raw["vocab_size"] - 1)
    result = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "load_s": time.perf_counter() - t0,
              "parameters": sum(p.numel() for p in model.parameters())}
    import transformers
    result["transformers"] = transformers.__version__
    print(f"loaded {result['parameters'] / 1e9:.2f} B parameters in {result['load_s']:.1f} s", flush=True)

    if "forward" in parts:
        x = torch.randint(0, vocab - 2, (fwd_batch, fwd_len), device=device)
        reset_peak(device)
        with torch.no_grad():
            result["forward_s"] = timed(device, lambda: logits_of(model, x), iters, warmup=3)
        result["forward_shape"] = [fwd_batch, fwd_len]
        result["forward_peak_gb"] = peak_gb(device)
        print(f"forward {fwd_batch}x{fwd_len}: {result['forward_s'] * 1e3:.1f} ms", flush=True)

    prompt = torch.randint(0, vocab - 2, (1, prompt_len), device=device).expand(samples, -1).contiguous()
    sampling = dict(temperature=1.0, top_p=0.95, mask_id=mask_id)
    with torch.no_grad():
        if "plain" in parts:
            reset_peak(device)
            out = []
            s = timed(device, lambda: out.append(plain_sampler(model, prompt, new_tokens, steps, **sampling)), 1, warmup=0)
            result["plain"] = {"seconds": s, "tokens_per_s": samples * new_tokens / s, "peak_gb": peak_gb(device),
                               "all_decoded": bool((out[-1] != mask_id).all())}
            print(f"plain sampler: {s:.2f} s, {samples * new_tokens / s:.1f} tok/s", flush=True)
        if "prefix" in parts:
            reset_peak(device)
            out = []
            s = timed(device, lambda: out.append(prefix_sampler(model, prompt, new_tokens, steps, block, **sampling)), 1, warmup=1)
            result["prefix"] = {"seconds": s, "tokens_per_s": samples * new_tokens / s, "block": block,
                                "peak_gb": peak_gb(device), "all_decoded": bool((out[-1] != mask_id).all())}
            print(f"prefix-cache sampler: {s:.2f} s, {samples * new_tokens / s:.1f} tok/s", flush=True)
    result["sampler_setting"] = {"samples": samples, "prompt_len": prompt_len, "new_tokens": new_tokens,
                                 "steps": steps, "temperature": 1.0, "top_p": 0.95, "confidence": "entropy"}

    if "update" in parts:
        trainable, rows = update_side(model, device, vocab, mask_id, up_sizes, up_prompt, up_response, max(2, iters // 4))
        result["update"] = {"lora_trainable": trainable, "rows": rows}

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# PyTorch reference on {result['card']} (torch {result['torch']}, transformers {result['transformers']})", "",
             "| what | time | rate |", "|---|---|---|"]
    if "forward_s" in result:
        n = fwd_batch * fwd_len
        lines.append(f"| forward {fwd_batch} x {fwd_len}, head everywhere | {result['forward_s'] * 1e3:.1f} ms | {n / result['forward_s'] / 1e3:.1f} k tokens/s |")
    for name in ("plain", "prefix"):
        if name in result:
            r = result[name]
            lines.append(f"| {name} sampler, {samples} x {new_tokens} new tokens | {r['seconds']:.2f} s | {r['tokens_per_s']:.1f} generated tokens/s{'' if r['all_decoded'] else ' (MASKS LEFT)'} |")
    for r in result.get("update", {}).get("rows", []):
        lines.append(f"| LoRA no-grad forward B={r['batch']} x {r['tokens']} | {r['no_grad_forward_s']:.3f} s | |")
        lines.append(f"| LoRA forward+backward B={r['batch']} x {r['tokens']} | {r['forward_backward_s']:.3f} s | peak {r['backward_peak_gb']:.1f} GB |")
    with open(os.path.join(args.out, "reference.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
