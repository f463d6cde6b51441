#!/usr/bin/env python3
"""Generation in PyTorch eager: the peer of `loom bench generate`.

The same GPT as Loom's (bench/gpt2_torch.py's model) at the gpt workload's shape with a
1024-token context (vocabulary 256, 4 layers, d_model 128, 4 heads), random weights. A
16-token prompt is continued greedily to the end of the context, batch 1, with a plain
KV cache loop (prefill, then one position per token, keys and values appended to
preallocated tensors), under torch.inference_mode. Prints one JSON object with the same
keys as `loom bench generate --json`: tokens/s, the prompt's time, ms per token over the
first and last 64 tokens, and ms per token without the cache (the window recomputed) at
lengths 48 and 992.

    python3 bench/generate_torch.py --threads 2
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from gpt2_torch import GPT

VOCAB, CONTEXT, LAYERS, D, HEADS, PROMPT = 256, 1024, 4, 128, 4, 16


def cached_forward(model, tokens, cache, start):
    """Logits [1, T, V] of tokens at positions start..start+T-1; keys and values into cache."""
    t = tokens.shape[1]
    x = model.wte(tokens) + model.wpe(torch.arange(start, start + t))
    hd = D // HEADS
    for i, block in enumerate(model.blocks):
        h = block.ln1(x)
        q, k, v = block.qkv(h).split(D, dim=2)
        q, k, v = (z.view(1, t, HEADS, hd).transpose(1, 2) for z in (q, k, v))
        keys, values = cache[i]
        keys[:, :, start:start + t] = k
        values[:, :, start:start + t] = v
        k, v = keys[:, :, :start + t], values[:, :, :start + t]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        if t > 1:
            mask = torch.ones(t, start + t, dtype=torch.bool).triu(start + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(1, t, D)
        x = x + block.proj(y)
        x = x + block.out(F.gelu(block.fc(block.ln2(x)), approximate="tanh"))
    return model.lnf(x) @ model.wte.weight.t()


def full_forward(model, tokens):
    t = tokens.shape[1]
    x = model.wte(tokens) + model.wpe(torch.arange(t))
    for block in model.blocks:
        x = block(x)
    return model.lnf(x) @ model.wte.weight.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT(VOCAB, CONTEXT, LAYERS, D, HEADS, sdpa=False).eval()
    prompt = torch.randint(0, VOCAB, (1, PROMPT))
    with torch.inference_mode():
        full_forward(model, prompt)  # warm-up
        cache = [(torch.zeros(1, HEADS, CONTEXT, D // HEADS), torch.zeros(1, HEADS, CONTEXT, D // HEADS)) for _ in range(LAYERS)]
        t0 = time.perf_counter()
        nxt = cached_forward(model, prompt, cache, 0)[0, -1].argmax().item()
        prompt_s = time.perf_counter() - t0
        sequence, per_token, length = prompt[0].tolist() + [nxt], [], PROMPT
        start = time.perf_counter()
        while length < CONTEXT:
            t0 = time.perf_counter()
            nxt = cached_forward(model, torch.tensor([[nxt]]), cache, length)[0, -1].argmax().item()
            per_token.append(time.perf_counter() - t0)
            sequence.append(nxt)
            length += 1
        total = time.perf_counter() - start

        def uncached(n):
            window = torch.tensor([sequence[:n]])
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                full_forward(model, window)[0, -1].argmax().item()
                times.append(time.perf_counter() - t0)
            return sorted(times)[2]

        print(json.dumps({
            "peer": "pytorch-eager", "torch": torch.__version__, "threads": a.threads, "workload": "generate",
            "tokens": len(per_token), "context": CONTEXT, "tokens_per_s": round(len(per_token) / total, 1),
            "prompt_ms": round(1000 * prompt_s, 3),
            "ms_per_token_first64": round(1000 * sum(per_token[:64]) / 64, 3),
            "ms_per_token_last64": round(1000 * sum(per_token[-64:]) / 64, 3),
            "uncached_ms_per_token_first": round(1000 * uncached(PROMPT + 32), 3),
            "uncached_ms_per_token_last": round(1000 * uncached(CONTEXT - 32), 3),
        }, sort_keys=True))


if __name__ == "__main__":
    main()
