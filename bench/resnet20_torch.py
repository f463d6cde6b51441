"""ResNet-20 on CIFAR-shaped images in PyTorch eager on the CPU: the peer of `loom bench --workload resnet20`.

The same model (He et al. 2015, section 4.2: a 3x3 conv to 16 channels, three stages of 3
basic blocks of 16, 32 and 64 channels, the last two halving the image with a strided
convolution and a 1x1 projection shortcut, global average pooling, a linear layer; batch
norm after every convolution, in training mode), the same batch (128 random 3x32x32
images, random labels), SGD lr 0.01 momentum 0.9, timed as every Loom benchmark is: 5
warm-up steps, then --repeats timed runs of --steps steps; the median run is reported as
one JSON line.

    python3 bench/resnet20_torch.py --threads 2 --repeats 3 [--precision bf16]
"""
import argparse, json
import torch, torch.nn as nn, torch.nn.functional as F
from torch_timing import timed

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--precision", choices=["float32", "bf16"], default="float32",
               help="bf16: each step's forward under torch.autocast on the CPU (convolutions and the linear layer in bf16)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        s.bn1 = nn.BatchNorm2d(cout)
        s.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        s.bn2 = nn.BatchNorm2d(cout)
        s.down = None
        if stride != 1 or cin != cout:
            s.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(s, x):
        h = F.relu(s.bn1(s.conv1(x)))
        h = s.bn2(s.conv2(h))
        return F.relu(h + (s.down(x) if s.down is not None else x))


def resnet20(classes=10):
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, cout in enumerate([16, 32, 64]):
        for b in range(3):
            layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


model = resnet20().train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.rand(128, 3, 32, 32)
y = torch.randint(0, 10, (128,))


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    opt.step()
    return loss.item()


per_s, runs, loss = timed(step, 128, a.steps, a.repeats)
print(json.dumps({"workload": "resnet20", "framework": f"torch {torch.__version__}", "precision": a.precision, "threads": a.threads,
                  "per_s": per_s, "unit": "samples/s", "runs_per_s": runs, "loss": loss}))
