"""Loom against PyTorch eager and JAX jit on the CPU reference workloads, side by side.

Runs `loom bench --json`, torch_ref.py and jax_ref.py (the peers' versions of mlp, cnn and
gpt; pass the folder that holds them) and bench/resnet20_torch.py and resnet20_jax.py (the peers'
resnet20) in turn, `--rounds` times for each thread count: in a round each workload runs on
every side back to back (the sides' order reversed every other round), so that the machine's
noise falls on all alike, and prints the medians as a Markdown table with Loom's ratio to each
peer: the ratio of the medians, and in brackets the median of the rounds' own ratios.

Every side is timed alike: 5 warm-up steps, then the median of `--repeats` timed runs of
30 steps (`loom bench --repeats`, the peers' `--repeats`); each round's line is that
median, and the table's figure the median over rounds. Every raw line (with the round, and
Loom's runs_per_s) is appended to --raw as JSON, and the table to --raw's `.md` beside it,
so that what the docs quote can be checked against what was run.

--probe runs bench/cross_core_probe.c (built with cc) for a second before every run and
after the last: how fast the two first CPUs hand data to each other, which on a cloud VM
changes for seconds at a time with where the host has put the vCPUs (sharing an L3 or
not). Each raw line gets the rates before and after it (`cross_core_gbps`; a Loom line's own,
which `loom bench` measures inside the run, is kept as `bench_cross_core_gbps`), and a second
table gives each side's median over the runs with both rates near the highest seen ("near":
at least 60% of it) and over those with both below ("far"), so a ratio can be read in each
state.

    python3 bench/compare_cpu.py --refs ../shared/bench --loom .build/release/loom
    LOOM_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python3 bench/compare_cpu.py ...   # the AVX2 code paths
    python3 bench/compare_cpu.py --refs ../shared/bench --loom-device xla --peers jax,loom-cpu --threads 2 \
        --workloads mlp,cnn,gpt    # Loom on XLA:CPU (PJRT) next to JAX jit, and Loom's own CPU backend
    python3 bench/compare_cpu.py --refs ../shared/bench --precision bf16 --peers torch,loom-float32
        # Loom's bf16 next to PyTorch's CPU autocast (bench/torch_autocast.py, resnet20_torch.py) and Loom's float32
    python3 bench/compare_cpu.py ... --threads 2 --probe   # each run labelled by the cores' hand-over rate
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile

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
p.add_argument("--probe", action="store_true", help="time the two first CPUs' hand-over rate before every run (cross_core_probe.c)")
a = p.parse_args()
if a.precision == "bf16" and "jax" in a.peers.split(","):
    sys.exit("compare_cpu.py: no JAX peer for --precision bf16; use --peers torch,loom-float32")

def lines(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]

here = os.path.dirname(os.path.abspath(__file__))

def runs(framework, threads, workload):
    # loom-cpu: Loom's own CPU backend beside Loom on --loom-device; loom-float32: Loom in float32 beside Loom in --precision
    if framework in ("loom", "loom-cpu", "loom-float32"):
        device = "cpu" if framework == "loom-cpu" else a.loom_device
        precision = "float32" if framework == "loom-float32" else a.precision
        return lines([a.loom, "bench", "--json", "--threads", str(threads), "--repeats", str(a.repeats), "--device", device,
                      "--precision", precision, "--workload", workload])
    precision = ["--precision", "bf16"] if a.precision == "bf16" else []
    if workload == "resnet20":  # resnet20's peers live in this folder
        return lines([sys.executable, os.path.join(here, f"resnet20_{framework}.py"),
                      "--threads", str(threads), "--repeats", str(a.repeats)] + precision)
    if framework == "torch" and a.precision == "bf16":  # the peers under CPU autocast live in this folder
        script = [sys.executable, os.path.join(here, "torch_autocast.py")]
    else:
        script = [sys.executable, os.path.join(a.refs, f"{framework}_ref.py")]
    return [l for l in lines(script + [workload, "--threads", str(threads), "--repeats", str(a.repeats)] + precision)
            if l["workload"] == workload]

probe = None
if a.probe:
    probe = os.path.join(tempfile.mkdtemp(), "cross_core_probe")
    subprocess.run(["cc", "-O3", "-march=native", "-pthread", os.path.join(here, "cross_core_probe.c"), "-o", probe], check=True)

def handover():
    return lines([probe, "1"])[0]["cross_core_gbps"] if probe else None

frameworks = ["loom"] + [f for f in a.peers.split(",") if f]
workloads = a.workloads.split(",")
rated = []  # (framework, threads, workload, per_s, hand-over rate before, after, round): every run
raw = open(a.raw, "a") if a.raw else None
for threads in [int(t) for t in a.threads.split(",")]:
    for r in range(a.rounds):
        rate = handover()
        for w in workloads:
            for f in (frameworks if r % 2 == 0 else frameworks[::-1]):
                found = runs(f, threads, w)
                after = handover()
                for line in found:
                    rated.append((f, threads, w, line["per_s"], rate, after, r))
                    extra = {"cross_core_gbps": [rate, after]} if probe else {}
                    if probe and "cross_core_gbps" in line:  # loom bench's own, from inside the run
                        extra["bench_cross_core_gbps"] = line["cross_core_gbps"]
                    if raw: raw.write(json.dumps({"framework": f, "round": r, "repeats": a.repeats, **line, **extra}) + "\n")
                rate = after
        print(f"threads {threads}: round {r + 1} of {a.rounds} done", file=sys.stderr)

def per_round(f, threads, w):
    """The median over rounds of Loom's ratio to peer f within the round."""
    by_round = {(x[0], x[6]): x[3] for x in rated if x[1:3] == (threads, w)}
    ratios = [by_round[("loom", r)] / by_round[(f, r)] for r in range(a.rounds) if ("loom", r) in by_round and (f, r) in by_round]
    return statistics.median(ratios) if ratios else None

out = []
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = open("/proc/cpuinfo").read()
width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
caps = " ".join(f"{k}={os.environ[k]}" for k in ("LOOM_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "LOOM_GEMM") if k in os.environ)
out.append(f"\n{cpu} ({width}), {os.cpu_count()} cores; Loom on --device {a.loom_device}, --precision {a.precision}; medians of {a.rounds} interleaved rounds, each the median of {a.repeats} timed runs after 5 warm-up steps; ratios of the medians and, in brackets, the median of the rounds' own" + (f"; {caps}" if caps else ""))
peers = frameworks[1:]
out.append("\n| workload | threads | Loom | " + " | ".join(peers) + " | " + " | ".join(f"Loom / {p}" for p in peers) + " |")
out.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in peers) + " | " + " | ".join("---:" for _ in peers) + " |")
def row(label, threads, w, per_side):
    med = {f: statistics.median(per_side[f]) for f in frameworks if per_side.get(f)}
    if "loom" not in med: return
    cells = [f"{med[p]:,.0f}" if p in med else "—" for p in peers]
    ratios = [f"{med['loom'] / med[p]:.2f}×" + (f" ({pr:.2f})" if label is None and (pr := per_round(p, threads, w)) else "")
              if p in med else "—" for p in peers]
    out.append(f"| {w} | {threads} | " + (f"{label} | " if label else "") + f"{med['loom']:,.0f} | " + " | ".join(cells)
               + " | " + " | ".join(ratios) + " |")

top = max(max(x[4], x[5]) for x in rated) if probe and rated else None  # the highest hand-over rate seen

def state(before, after):
    return "near" if min(before, after) >= 0.6 * top else "far" if max(before, after) < 0.6 * top else None

def values(threads, w, s=None):
    """Each side's per_s over its runs of workload w (in state s only, if given)."""
    return {f: [x[3] for x in rated if x[:3] == (f, threads, w) and (s is None or state(x[4], x[5]) == s)] for f in frameworks}

for threads in [int(t) for t in a.threads.split(",")]:
    for w in ("mlp", "cnn", "gpt", "resnet20"):
        row(None, threads, w, values(threads, w))
if top is not None:
    out.append(f"\nBy the cores' hand-over rate around each run (cross_core_probe.c; highest seen {top:.0f} GB/s; near: "
               f"both rates at least {0.6 * top:.0f} GB/s, far: both below; in brackets the runs counted, a run whose two rates disagree left out)")
    out.append("\n| workload | threads | state | Loom | " + " | ".join(peers) + " | " + " | ".join(f"Loom / {p}" for p in peers) + " |")
    out.append("| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in peers) + " | " + " | ".join("---:" for _ in peers) + " |")
    for threads in [int(t) for t in a.threads.split(",")]:
        for w in ("mlp", "cnn", "gpt", "resnet20"):
            for s in ("near", "far"):
                runs_in = values(threads, w, s)
                counts = ", ".join(f"{f} {len(runs_in[f])}" for f in frameworks)
                row(f"{s} ({counts})", threads, w, runs_in)
print("\n".join(out))
if raw:
    raw.close()
    with open(os.path.splitext(a.raw)[0] + ".md", "a") as md:
        md.write("\n".join(out) + "\n")
