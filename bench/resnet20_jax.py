"""ResNet-20 on CIFAR-shaped images in JAX (jax.jit over the whole step, CPU): the peer of
`loom bench --workload resnet20` beside bench/resnet20_torch.py.

The same model, batch and optimizer as the PyTorch peer: ResNet-20 (3 stages of 3 basic
blocks, 16/32/64 channels, 1x1 projection shortcuts where the shape changes), batch norm
in training mode (batch statistics; running statistics updated with momentum 0.1 as
state), 128 random 3x32x32 images with random labels, SGD lr 0.01 momentum 0.9. The whole
step (forward, gradient, update, running statistics) is one jitted function. Timed as
every Loom benchmark: 5 warm-up steps (the first compiles), then --repeats timed runs of
--steps steps; the median run is printed as one JSON line.

    python3 bench/resnet20_jax.py --threads 2 --repeats 3
    (--threads 1 pins the process to one core and turns off XLA's multi-threaded Eigen)
"""
import argparse, json, math, os, statistics, time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--repeats", type=int, default=3)
a = p.parse_args()
if a.threads < len(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:a.threads]))
if a.threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import numpy as np
import jax, jax.numpy as jnp
from jax import lax

keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))


def conv_init(cin, cout, k):  # PyTorch's default: U(+-1/sqrt(fan_in))
    bound = 1 / math.sqrt(cin * k * k)
    return jax.random.uniform(next(keys), (cout, cin, k, k), jnp.float32, -bound, bound)


def bn_init(c):
    return {"g": jnp.ones((c,)), "b": jnp.zeros((c,))}, {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))}


def init():
    params, stats = {"stem": conv_init(3, 16, 3)}, {}
    params["stem_bn"], stats["stem_bn"] = bn_init(16)
    blocks, block_stats, cin = [], [], 16
    for stage, cout in enumerate([16, 32, 64]):
        for b in range(3):
            stride = 2 if stage > 0 and b == 0 else 1
            p_, s_ = {"c1": conv_init(cin, cout, 3), "c2": conv_init(cout, cout, 3)}, {}
            p_["bn1"], s_["bn1"] = bn_init(cout)
            p_["bn2"], s_["bn2"] = bn_init(cout)
            if stride != 1 or cin != cout:
                p_["down"] = conv_init(cin, cout, 1)
                p_["down_bn"], s_["down_bn"] = bn_init(cout)
            blocks.append((p_, stride)); block_stats.append(s_); cin = cout
    params["blocks"] = [b for b, _ in blocks]
    strides = [s for _, s in blocks]
    stats["blocks"] = block_stats
    bound = 1 / math.sqrt(64)
    params["fc"] = {"w": jax.random.uniform(next(keys), (64, 10), jnp.float32, -bound, bound),
                    "b": jax.random.uniform(next(keys), (10,), jnp.float32, -bound, bound)}
    return params, stats, strides


def conv(x, w, stride):
    pad = (w.shape[-1] - 1) // 2
    return lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=("NCHW", "OIHW", "NCHW"))


def batch_norm(x, p_, s_, eps=1e-5, momentum=0.1):
    mean = jnp.mean(x, axis=(0, 2, 3))
    var = jnp.var(x, axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    new = {"mean": (1 - momentum) * s_["mean"] + momentum * mean, "var": (1 - momentum) * s_["var"] + momentum * var * n / (n - 1)}
    y = (x - mean[None, :, None, None]) * lax.rsqrt(var + eps)[None, :, None, None]
    return y * p_["g"][None, :, None, None] + p_["b"][None, :, None, None], new


def forward(params, stats, strides, x):
    new = {"blocks": []}
    h, new["stem_bn"] = batch_norm(conv(x, params["stem"], 1), params["stem_bn"], stats["stem_bn"])
    h = jax.nn.relu(h)
    for bp, bs, stride in zip(params["blocks"], stats["blocks"], strides):
        ns = {}
        y, ns["bn1"] = batch_norm(conv(h, bp["c1"], stride), bp["bn1"], bs["bn1"])
        y, ns["bn2"] = batch_norm(conv(jax.nn.relu(y), bp["c2"], 1), bp["bn2"], bs["bn2"])
        shortcut = h
        if "down" in bp:
            shortcut, ns["down_bn"] = batch_norm(conv(h, bp["down"], stride), bp["down_bn"], bs["down_bn"])
        h = jax.nn.relu(y + shortcut)
        new["blocks"].append(ns)
    logits = jnp.mean(h, axis=(2, 3)) @ params["fc"]["w"] + params["fc"]["b"]
    return logits, new


params, stats, strides = init()
momentum = jax.tree.map(jnp.zeros_like, params)


def loss_fn(params, stats, x, y):
    logits, new = forward(params, stats, strides, x)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(lp, y[:, None], axis=-1)), new


@jax.jit
def step(params, momentum, stats, x, y):
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
    momentum = jax.tree.map(lambda m, g: 0.9 * m + g, momentum, grads)  # torch.optim.SGD's momentum
    params = jax.tree.map(lambda p_, m: p_ - 0.01 * m, params, momentum)
    return params, momentum, new, loss


rng = np.random.default_rng(0)
x = jnp.asarray(rng.random((128, 3, 32, 32), dtype=np.float32))
y = jnp.asarray(rng.integers(0, 10, 128), jnp.int32)
for _ in range(5):
    params, momentum, stats, loss = step(params, momentum, stats, x, y)
jax.block_until_ready(loss)
runs = []
for _ in range(a.repeats):
    t0 = time.perf_counter()
    for _ in range(a.steps):
        params, momentum, stats, loss = step(params, momentum, stats, x, y)
    jax.block_until_ready((params, loss))
    runs.append(128 * a.steps / (time.perf_counter() - t0))
print(json.dumps({"workload": "resnet20", "framework": f"jax {jax.__version__}", "threads": a.threads,
                  "per_s": statistics.median(runs), "unit": "samples/s", "runs_per_s": runs, "loss": float(loss)}))
