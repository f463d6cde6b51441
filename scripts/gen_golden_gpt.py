"""Golden fixture for Loom's GPT: forward loss, every parameter gradient, and the losses
of three AdamW steps, computed in float64 by an independent implementation (PyTorch).

Run once when the model's definition changes; the output is committed:
    python3 scripts/gen_golden_gpt.py Tests/LoomNNTests/Fixtures/gpt_golden.json
Parameter names follow Loom's module tree (blocks.0.attention.qkv.weight, ...).
"""
import json, math, sys
import torch
import torch.nn.functional as F

torch.manual_seed(1234)
torch.set_default_dtype(torch.float64)
V, T, L, C, H, B = 13, 8, 2, 16, 2, 3

def rnd(*shape, std=0.1, mean=0.0):
    return (torch.randn(*shape) * std + mean).requires_grad_()

P = {"wte.weight": rnd(V, C, std=0.3), "wpe.weight": rnd(T, C, std=0.3)}
for i in range(L):
    p = f"blocks.{i}."
    P[p + "ln1.weight"] = rnd(C, mean=1.0); P[p + "ln1.bias"] = rnd(C)
    P[p + "attention.qkv.weight"] = rnd(3 * C, C, std=0.3); P[p + "attention.qkv.bias"] = rnd(3 * C)
    P[p + "attention.proj.weight"] = rnd(C, C, std=0.3); P[p + "attention.proj.bias"] = rnd(C)
    P[p + "ln2.weight"] = rnd(C, mean=1.0); P[p + "ln2.bias"] = rnd(C)
    P[p + "mlp.fc.weight"] = rnd(4 * C, C, std=0.3); P[p + "mlp.fc.bias"] = rnd(4 * C)
    P[p + "mlp.proj.weight"] = rnd(C, 4 * C, std=0.3); P[p + "mlp.proj.bias"] = rnd(C)
P["lnf.weight"] = rnd(C, mean=1.0); P["lnf.bias"] = rnd(C)

tokens = torch.randint(0, V, (B, T))
targets = torch.randint(0, V, (B, T))

def forward():
    x = P["wte.weight"][tokens] + P["wpe.weight"][torch.arange(T)]
    for i in range(L):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (C,), P[p + "ln1.weight"], P[p + "ln1.bias"], 1e-5)
        q, k, v = F.linear(h, P[p + "attention.qkv.weight"], P[p + "attention.qkv.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, P[p + "attention.proj.weight"], P[p + "attention.proj.bias"])
        h = F.layer_norm(x, (C,), P[p + "ln2.weight"], P[p + "ln2.bias"], 1e-5)
        h = F.gelu(F.linear(h, P[p + "mlp.fc.weight"], P[p + "mlp.fc.bias"]), approximate="tanh")
        x = x + F.linear(h, P[p + "mlp.proj.weight"], P[p + "mlp.proj.bias"])
    x = F.layer_norm(x, (C,), P["lnf.weight"], P["lnf.bias"], 1e-5)
    return F.cross_entropy((x @ P["wte.weight"].T).view(-1, V), targets.view(-1))

def dump(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().reshape(-1)]}

params0 = {k: dump(v) for k, v in P.items()}
loss = forward()
loss.backward()
grads = {k: dump(v.grad) for k, v in P.items()}

opt = torch.optim.AdamW(P.values(), lr=1e-2, weight_decay=0.01)
for v in P.values(): v.grad = None
losses = []
for _ in range(3):
    opt.zero_grad(set_to_none=True)
    l = forward(); l.backward(); opt.step(); losses.append(float(l))

json.dump({"config": {"vocab": V, "context": T, "layers": L, "d_model": C, "heads": H, "batch": B},
           "tokens": tokens.reshape(-1).tolist(), "targets": targets.reshape(-1).tolist(),
           "params": params0, "loss": float(loss), "grads": grads, "adamw_losses": losses,
           "generator": f"scripts/gen_golden_gpt.py, torch {torch.__version__}, float64"},
          open(sys.argv[1], "w"))
print("loss", float(loss), "adamw", losses)
