#!/usr/bin/env python3
"""The ResNet-18 golden of Loom's tests: torchvision's resnet18 architecture at width 4
(stages of 4, 8, 16 and 32 channels), written out in plain PyTorch so that its tensors
carry Loom's names, with random weights and batch-norm statistics.

Writes resnet18_golden.safetensors: the weights under Loom's names, and under `golden.`
an input [4, 3, 64, 64] (64x64, so that the last stage's batch norm still sees 2x2 pixels
of 4 images: at 1x1 pixel of 2 images its statistics amplify rounding a thousandfold),
and, in training mode, the logits, the gradients of the input and of some parameters,
and the running statistics after the step; then the logits in evaluation mode.
resnet18_golden.json has the targets, the loss and the names of those tensors.

    pip install torch safetensors
    python3 scripts/gen_golden_resnet.py Tests/LoomTrainTests/Fixtures
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None

    def forward(self, x):
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResNet18(nn.Module):
    def __init__(self, w=4, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], w
        for s, c in enumerate([w, 2 * w, 4 * w, 8 * w]):
            for b in range(2):
                blocks.append(Block(cin, c, 2 if s > 0 and b == 0 else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def loom_name(name):
    name = name.replace("running_mean", "runningMean").replace("running_var", "runningVar")
    name = name.replace("stem.", "stem.layers.", 1).replace("blocks.", "blocks.layers.", 1).replace("downsample.", "downsample.layers.")
    return name.replace("fc.", "head.layers.1.")


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    model = ResNet18()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.8, 1.2)
    state = {loom_name(k): v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    targets = torch.tensor([3, 7, 0, 9])
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    params = dict(model.named_parameters())
    watched = ["stem.0.weight", "blocks.4.conv1.weight", "blocks.4.downsample.1.weight", "blocks.7.bn2.bias", "fc.weight"]
    buffers = dict(model.named_buffers())
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    golden = {"golden.input": x, "golden.train_logits": logits, "golden.input_grad": x.grad, "golden.eval_logits": eval_logits}
    golden.update({"golden.grad." + loom_name(n): params[n].grad for n in watched})
    golden.update({"golden.running." + loom_name(n): buffers[n] for n in ["stem.1.running_mean", "stem.1.running_var", "blocks.7.bn2.running_var"]})
    state.update({k: v.detach().clone().contiguous() for k, v in golden.items()})
    save_file(state, os.path.join(out, "resnet18_golden.safetensors"))
    json.dump({"targets": targets.tolist(), "loss": loss.item()}, open(os.path.join(out, "resnet18_golden.json"), "w"))


if __name__ == "__main__":
    main()
