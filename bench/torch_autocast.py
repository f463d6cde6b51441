"""mlp, cnn and gpt in PyTorch eager on the CPU under autocast: the peers of `loom bench --precision bf16`.

The reference workloads' models, batches and optimizers (mlp 784-512-512-10 batch 128 SGD
momentum 0.9; cnn two 5x5 convolutions batch 64 SGD momentum 0.9; gpt 4 layers d128 context
128, 16 sequences, AdamW lr 3e-4, tied head), each step run under
`torch.autocast("cpu", dtype=torch.bfloat16)` (`--precision bf16`, PyTorch's CPU mixed
precision: linear, matmul and convolution in bf16; the loss in float32) or not
(`--precision float32`). Timed as every Loom benchmark is: 5 warm-up steps, then --repeats
timed runs of --steps steps; one JSON line per workload with the median run. resnet20's peer
is bench/resnet20_torch.py (it takes --precision too).

    python3 bench/torch_autocast.py all --threads 2 --repeats 3 --precision bf16
"""
import argparse, json
import torch, torch.nn as nn, torch.nn.functional as F
from torch_timing import timed

p = argparse.ArgumentParser()
p.add_argument("which", nargs="?", default="all")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--precision", choices=["float32", "bf16"], default="bf16")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(s, d, heads):
        super().__init__()
        s.heads = heads
        s.ln1, s.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.fc, s.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(s, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, s.heads, c // s.heads).transpose(1, 2) for z in s.qkv(s.ln1(x)).split(c, dim=2))
        x = x + s.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c))
        return x + s.out(F.gelu(s.fc(s.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(s, vocab=256, context=128, d=128, layers=4, heads=4):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        s.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        s.lnf, s.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        s.head.weight = s.wte.weight
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(s, idx):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1]))
        for b in s.blocks:
            x = b(x)
        return s.head(s.lnf(x))


def workloads():
    mlp = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    yield "mlp", mlp, torch.rand(128, 784), torch.randint(0, 10, (128,)), torch.optim.SGD(mlp.parameters(), lr=0.01, momentum=0.9), 128
    cnn = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    yield "cnn", cnn, torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,)), torch.optim.SGD(cnn.parameters(), lr=0.01, momentum=0.9), 64
    gpt = GPT()
    yield "gpt", gpt, torch.randint(0, 256, (16, 128)), torch.randint(0, 256, (16, 128)), torch.optim.AdamW(gpt.parameters(), lr=3e-4), 16 * 128


for name, model, x, y, opt, units in workloads():
    if a.which not in (name, "all"):
        continue

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            out = model(x)
        loss = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    per_s, runs, loss = timed(step, units, a.steps, a.repeats)
    print(json.dumps({"workload": name, "framework": f"torch {torch.__version__}", "precision": a.precision, "threads": a.threads,
                      "per_s": per_s, "unit": "tokens/s" if name == "gpt" else "samples/s", "runs_per_s": runs,
                      "loss": loss}), flush=True)
