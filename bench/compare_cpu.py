"""Loom against PyTorch eager and JAX jit on the CPU reference workloads, side by side.

Runs `loom bench --json`, torch_ref.py and jax_ref.py (the peers' versions of mlp, cnn and
gpt; pass the folder that holds them) and bench/resnet20_torch.py and resnet20_jax.py (the peers'
resnet20) in turn, `--rounds` times for each thread
count, so that the machine's noise falls on all three alike, and prints the medians as a
Markdown table with Loom's ratio to each peer.

Every side is timed alike: 5 warm-up steps, then the median of `--repeats` timed runs of
30 steps (`loom bench --repeats`, the peers' `--repeats`); each round's line is that
median, and the table's figure the median over rounds. Every raw line (with the round, and
Loom's runs_per_s) is appended to --raw as JSON, and the table to --raw's `.md` beside it,
so that what the docs quote can be checked against what was run.

    python3 bench/compare_cpu.py --refs ../shared/bench --loom .build/release/loom
    LOOM_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python3 bench/compare_cpu.py ...   # the AVX2 code paths
    python3 bench/compare_cpu.py --refs ../shared/bench --loom-device xla --peers jax,loom-cpu --threads 2 \
        --workloads mlp,cnn,gpt    # Loom on XLA:CPU (PJRT) next to JAX jit, and Loom's own CPU backend
    python3 bench/compare_cpu.py --refs ../shared/bench --precision bf16 --peers torch,loom-float32
        # Loom's bf16 next to PyTorch's CPU autocast (bench/torch_autocast.py, resnet20_torch.py) and Loom's float32
"""
import argparse, json, os, platform, statistics, subprocess, sys

p = argparse.ArgumentParser()
p.add_argument("--refs", required=True, help="folder with torch_ref.py and jax_ref.py")
p.add_argument("--loom", default=".build/release/loom")
p.add_argument("--threads", default="2,1")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--repeats", type=int, default=3, help="timed runs per round on every side (median)")
p.add_argument("--peers", default="torch,jax")
p.add_argument("--raw", default=None, help="append every result line (JSON) to this file")
p.add_argument("--loom-device", default="cpu", help="loom bench --device (xla: on the PJRT plugin)")
p.add_argument("--workloads", default="mlp,cnn,gpt,resnet20")
p.add_argument("--precision", choices=["float32", "bf16"], default="float32",
               help="loom bench --precision; the torch peer under CPU autocast for bf16 (JAX has no peer there)")
a = p.parse_args()
if a.precision == "bf16" and "jax" in a.peers.split(","):
    sys.exit("compare_cpu.py: no JAX peer for --precision bf16; use --peers torch,loom-float32")

def lines(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]

here = os.path.dirname(os.path.abspath(__file__))

def runs(framework, threads):
    # loom-cpu: Loom's own CPU backend beside Loom on --loom-device; loom-float32: Loom in float32 beside Loom in --precision
    if framework in ("loom", "loom-cpu", "loom-float32"):
        device = "cpu" if framework == "loom-cpu" else a.loom_device
        precision = "float32" if framework == "loom-float32" else a.precision
        return [l for w in a.workloads.split(",")
                for l in lines([a.loom, "bench", "--json", "--threads", str(threads), "--repeats", str(a.repeats), "--device", device,
                                "--precision", precision, "--workload", w])]
    if framework == "torch" and a.precision == "bf16":  # the peers under CPU autocast live in this folder
        script, precision = [sys.executable, os.path.join(here, "torch_autocast.py")], ["--precision", "bf16"]
    else:
        script, precision = [sys.executable, os.path.join(a.refs, f"{framework}_ref.py")], []
    found = [l for l in lines(script + ["all", "--threads", str(threads), "--repeats", str(a.repeats)] + precision)
             if l["workload"] in a.workloads.split(",")]
    if framework in ("torch", "jax") and "resnet20" in a.workloads.split(","):  # resnet20's peers live in this folder
        found += lines([sys.executable, os.path.join(here, f"resnet20_{framework}.py"),
                        "--threads", str(threads), "--repeats", str(a.repeats)] + precision)
    return found

frameworks = ["loom"] + [f for f in a.peers.split(",") if f]
results = {}  # (framework, threads, workload) -> [per_s]
raw = open(a.raw, "a") if a.raw else None
for threads in [int(t) for t in a.threads.split(",")]:
    for r in range(a.rounds):
        for f in frameworks:
            for line in runs(f, threads):
                results.setdefault((f, threads, line["workload"]), []).append(line["per_s"])
                if raw: raw.write(json.dumps({"framework": f, "round": r, "repeats": a.repeats, **line}) + "\n")
        print(f"threads {threads}: round {r + 1} of {a.rounds} done", file=sys.stderr)

out = []
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = open("/proc/cpuinfo").read()
width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
caps = " ".join(f"{k}={os.environ[k]}" for k in ("LOOM_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "LOOM_GEMM") if k in os.environ)
out.append(f"\n{cpu} ({width}), {os.cpu_count()} cores; Loom on --device {a.loom_device}, --precision {a.precision}; medians of {a.rounds} interleaved rounds, each the median of {a.repeats} timed runs after 5 warm-up steps" + (f"; {caps}" if caps else ""))
peers = frameworks[1:]
out.append("\n| workload | threads | Loom | " + " | ".join(peers) + " | " + " | ".join(f"Loom / {p}" for p in peers) + " |")
out.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in peers) + " | " + " | ".join("---:" for _ in peers) + " |")
for threads in [int(t) for t in a.threads.split(",")]:
    for w in ("mlp", "cnn", "gpt", "resnet20"):
        med = {f: statistics.median(results[(f, threads, w)]) for f in frameworks if (f, threads, w) in results}
        if "loom" not in med: continue
        cells = [f"{med[p]:,.0f}" if p in med else "—" for p in peers]
        ratios = [f"{med['loom'] / med[p]:.2f}×" if p in med else "—" for p in peers]
        out.append(f"| {w} | {threads} | {med['loom']:,.0f} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
print("\n".join(out))
if raw:
    raw.close()
    with open(os.path.splitext(a.raw)[0] + ".md", "a") as md:
        md.write("\n".join(out) + "\n")
