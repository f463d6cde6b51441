"""A bf16 run's losses next to float32's: the same config, seed and steps trained twice with
`loom train` (float32, then `--precision bf16`), every step's training loss compared.

Prints one JSON line per config: the largest absolute and relative difference over the steps,
the step it happened at, and both runs' final validation losses (when the run evaluates).

    python3 bench/bf16_losses.py --loom .build/release/loom --steps 200 \
        examples/shakespeare-gpt.toml examples/mnist-mlp.toml examples/cifar-resnet20.toml
"""
import argparse, json, os, subprocess, sys, tempfile

p = argparse.ArgumentParser()
p.add_argument("configs", nargs="+")
p.add_argument("--loom", default=".build/release/loom")
p.add_argument("--steps", type=int, default=200)
p.add_argument("--threads", type=int, default=None)
a = p.parse_args()


def every_step(config):
    """The config with `log_every = 1` in [train], written beside it (its paths stay valid)."""
    text = open(config).read()
    assert "[train]" in text, f"{config} has no [train] table"
    lines = [l for l in text.splitlines() if not l.strip().startswith("log_every")]
    i = lines.index("[train]")
    path = os.path.join(os.path.dirname(os.path.abspath(config)), f".bf16-losses-{os.getpid()}-{os.path.basename(config)}")
    open(path, "w").write("\n".join(lines[:i + 1] + ["log_every = 1"] + lines[i + 1:]) + "\n")
    return path


def train(config, precision, out):
    cmd = [a.loom, "train", config, "--steps", str(a.steps), "--precision", precision, "--out", out]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    [run] = [os.path.join(out, d) for d in os.listdir(out)]
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    steps = {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r}
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    return steps, (val[-1] if val else None)


for config in a.configs:
    logged = every_step(config)
    try:
        with tempfile.TemporaryDirectory() as f32, tempfile.TemporaryDirectory() as b16:
            (fl, fv), (bl, bv) = train(logged, "float32", f32), train(logged, "bf16", b16)
    finally:
        os.remove(logged)
    common = sorted(set(fl) & set(bl))
    worst = max(common, key=lambda s: abs(bl[s] - fl[s]))
    worst_rel = max(common, key=lambda s: abs(bl[s] - fl[s]) / abs(fl[s]))
    print(json.dumps({"config": config, "steps": len(common), "max_abs_diff": abs(bl[worst] - fl[worst]), "at_step": worst,
                      "max_rel_diff": abs(bl[worst_rel] - fl[worst_rel]) / abs(fl[worst_rel]), "identical_steps": sum(bl[s] == fl[s] for s in common),
                      "final_loss": {"float32": fl[common[-1]], "bf16": bl[common[-1]]}, "val_loss": {"float32": fv, "bf16": bv}}), flush=True)
