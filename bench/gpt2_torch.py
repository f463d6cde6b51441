#!/usr/bin/env python3
"""GPT-2 small in PyTorch eager: the peer of `loom bench --workload gpt2`.

The same model as Loom's GPT (token + learned position embeddings, 12 pre-LayerNorm
blocks of causal self-attention and a 4x tanh-GELU MLP, final LayerNorm, head tied to the
token embedding, init N(0, 0.02)) at vocabulary 50304, context 1024, batch 8, trained with
AdamW (lr 3e-4) on a fixed random batch. Attention is written out (softmax of masked
scores), as Loom computes it; `--sdpa` uses PyTorch's fused scaled_dot_product_attention.

Prints one JSON object: tokens/s (median of repeats), step time, peak memory, the device.
`--small` shrinks the model to a toy for checking the script on a CPU.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attention(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            y = scores.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, context, layers, d, heads, sdpa):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, sdpa) for _ in range(layers))
        self.lnf = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sdpa", action="store_true", help="fused attention (not what Loom computes)")
    ap.add_argument("--small", action="store_true", help="a toy model, to check the script on a CPU")
    a = ap.parse_args()

    vocab, context, layers, d, heads, batch = (50304, 1024, 12, 768, 12, 8) if not a.small else (512, 64, 2, 64, 4, 4)
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    torch.manual_seed(0)
    model = GPT(vocab, context, layers, d, heads, a.sdpa).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, min(vocab, 50257), (batch, context), device=dev)
    targets = torch.randint(0, min(vocab, 50257), (batch, context), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(tokens, targets)
        loss.backward()
        opt.step()
        return loss.detach()  # read once a run ends, as Loom's timed steps are

    for _ in range(a.warmup):
        step().item()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        loss = loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    parameters = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "peer": "pytorch-eager" + ("-sdpa" if a.sdpa else ""), "torch": torch.__version__, "precision": a.precision,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "tokens_per_s": round(batch * context * a.steps / seconds, 1), "step_ms": round(1000 * seconds / a.steps, 3),
        "peak_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0,
        "parameters": parameters, "loss": round(loss, 4),
    }, sort_keys=True))


if __name__ == "__main__":
    main()
