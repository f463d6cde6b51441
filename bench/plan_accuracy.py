"""How well `loom plan` predicts this machine: each layout's predicted peak memory per rank
and step time against what training it on in-process ranks measures.

Calibrates once (`loom plan --calibrate CONFIG`), then for every layout runs
`loom plan CONFIG FLAGS --cluster C --measure --json` (the prediction, then 3 warm-up and
8 timed steps, the median) `--rounds` times, interleaved, and reports the least of the rounds' medians
(this machine's noise only ever slows a run; the calibration takes the better of its runs
alike). For each rank count with more than one layout it also checks the ranking: the layout
predicted fastest must measure within 10% of the fastest measured. Prints a Markdown table;
appends every raw line to --raw and the table to --raw's `.md`.

    python3 bench/plan_accuracy.py --loom .build/release/loom --raw bench/results/plan-accuracy.jsonl
"""
import argparse, json, platform, statistics, subprocess, sys, tempfile, os

GPT = "examples/shakespeare-gpt.toml"
GPT_LAYOUTS = [
    "--dp 2", "--tp 2", "--dp 2 --zero 1", "--dp 2 --zero 2", "--dp 2 --zero 3",
    "--pp 2 --micro-batches 4", "--pp 2 --micro-batches 4 --schedule gpipe", "--pp 2 --micro-batches 8 --recompute",
    "--pp 2 --micro-batches 4 --schedule interleaved --chunks 2", "--dp 2 --micro-batches 4",
    "--dp 4", "--tp 4", "--dp 2 --tp 2", "--pp 4 --micro-batches 8", "--dp 2 --pp 2 --micro-batches 4 --zero 1",
    "--dp 2 --tp 2 --pp 2 --micro-batches 4", "--dp 8",
]
RESNET = """[model]
kind = "resnet"
depth = 20
[data]
path = "data/mnist_5k.csv.gz"
validation_fraction = 0.1
[train]
steps = 100
batch_size = 64
optimizer = "sgd"
lr = 0.05
momentum = 0.9
"""
RESNET_LAYOUTS = ["--dp 2", "--dp 2 --zero 1", "--dp 4"]

p = argparse.ArgumentParser()
p.add_argument("--loom", default=".build/release/loom")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--raw", default=None)
a = p.parse_args()

def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-600:]}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")], out.stderr

def ranks(flags):
    f = flags.split(); n = 1
    for k in ("--dp", "--tp", "--pp"):
        if k in f: n *= int(f[f.index(k) + 1])
    return n

tmp = tempfile.mkdtemp()
resnet = os.path.join(tmp, "mnist-resnet20.toml")
open(resnet, "w").write(RESNET)
rows, raw = [], []
for name, config, layouts in [("gpt", GPT, GPT_LAYOUTS), ("resnet20", resnet, RESNET_LAYOUTS)]:
    cluster = os.path.join(tmp, name + ".toml")
    _, log = run([a.loom, "plan", "--calibrate", config, "--ranks", "8", "--out", cluster])
    print(log.strip(), file=sys.stderr)
    measured = {l: [] for l in layouts}
    predicted = {}
    for r in range(a.rounds):
        for l in layouts:
            lines, _ = run([a.loom, "plan", config, *l.split(), "--cluster", cluster, "--measure", "--json"])
            pred = next(x for x in lines if "peak_bytes" in x); meas = next(x for x in lines if "measured_ms" in x)
            predicted[l] = pred; measured[l].append(meas)
            raw.append({"model": name, "flags": l, "round": r, "prediction": pred, "measurement": meas})
    for l in layouts:
        m = measured[l]
        ms = min(x["measured_ms"] for x in m)
        mem = statistics.median(x["measured_bytes"] for x in m)
        pr = predicted[l]
        rows.append((name, l, ranks(l), pr["step_ms"], ms, pr["peak_bytes"], mem))

print("| model | layout (`loom train` flags) | ranks | step predicted (ms) | measured (ms) | error | peak/rank predicted (MiB) | measured (MiB) | error |")
print("|---|---|---|---|---|---|---|---|---|")
table = []
for name, l, n, pt, mt, pm, mm in rows:
    line = f"| {name} | `{l}` | {n} | {pt:.1f} | {mt:.1f} | {100 * (pt / mt - 1):+.0f}% | {pm / 2**20:.1f} | {mm / 2**20:.1f} | {100 * (pm / mm - 1):+.1f}% |"
    table.append(line); print(line)
within = lambda i, lim: abs(rows[i][3] / rows[i][4] - 1) <= lim
tm = sum(within(i, 0.25) for i in range(len(rows))); mm_ = sum(abs(r[5] / r[6] - 1) <= 0.10 for r in rows)
summary = [f"\n{len(rows)} layouts: step time within 25% for {tm}, peak memory within 10% for {mm_}."]
for name in ("gpt", "resnet20"):
    for n in sorted(set(r[2] for r in rows if r[0] == name)):
        group = [r for r in rows if r[0] == name and r[2] == n]
        if len(group) < 2: continue
        best_pred = min(group, key=lambda r: r[3]); best_meas = min(group, key=lambda r: r[4])
        ok = best_pred[4] <= 1.10 * best_meas[4]
        summary.append(f"{name}, {n} ranks: predicted fastest `{best_pred[1]}` measures {best_pred[4]:.1f} ms; fastest measured `{best_meas[1]}` "
                       f"{best_meas[4]:.1f} ms: {'within' if ok else 'NOT within'} 10% ({100 * (best_pred[4] / best_meas[4] - 1):+.0f}%).")
for s in summary: print(s)
if a.raw:
    with open(a.raw, "a") as f:
        for x in raw: f.write(json.dumps({**x, "processor": platform.processor() or platform.machine()}) + "\n")
    with open(os.path.splitext(a.raw)[0] + ".md", "a") as f:
        f.write("\n".join(table) + "\n" + "\n".join(summary) + "\n")
