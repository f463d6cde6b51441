#!/usr/bin/env bash
# The GPU check: one command on a machine with an NVIDIA GPU, Python with PyTorch, and no
# Swift or Open MPI. It uses the static bundle (scripts/build-static.sh --archive makes
# .dist/loom.tar.xz, which this unpacks; LOOM=path/to/loom to use another binary) and
# writes one JSON report (OUT, default gpu-check.json):
#   1. correctness: `loom check --device cuda` (every op and the optimizers against the CPU),
#      then loom train --device cuda against the same run on the CPU (mlp, cnn and
#      a small gpt, the gpt with --tf32, the gpt with --precision bf16 against the CPU's
#      bf16 run, the gpt on two data-parallel ranks): the losses must agree;
#   2. speed: GPT-2 small (batch 8 x 1024 tokens, AdamW) in Loom (float32, TF32, bf16) next
#      to PyTorch eager (float32, TF32, bf16 autocast) on the same GPU: tokens/s, MFU, peak
#      memory (SPEED=0 leaves this out).
# The report is written once the correctness runs are done, and again with the speed
# figures: a run or a benchmark that fails is recorded with its error and the rest go on.
# Exits non-zero if a correctness check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOM=${LOOM:-.dist/loom/loom}
OUT=${OUT:-gpu-check.json}
STEPS=${STEPS:-10}
SPEED=${SPEED:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$LOOM" ] && [ "$LOOM" = .dist/loom/loom ] && [ -f .dist/loom.tar.xz ]; then tar -C .dist -xJf .dist/loom.tar.xz; fi
[ -x "$LOOM" ] || { echo "gpu-check: $LOOM not found (bash scripts/build-static.sh --archive makes it)" >&2; exit 1; }
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
echo "gpu-check: $gpu" >&2
# PyTorch's pip wheels carry NVRTC and cuBLAS outside the loader's path, in whichever
# site directory pip put them (system, user or virtual environment).
sites=$(python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))')
libs=""
while IFS= read -r site; do
  for d in "$site"/nvidia/*/lib "$site"/torch/lib; do [ -d "$d" ] && libs="$libs$d:"; done
done <<< "$sites"
export LOOM_CUDA_LIBS="$libs${LOOM_CUDA_LIBS:-}"

cat > "$work/gpt.toml" <<TOML
[model]
kind = "gpt"
layers = 4
d_model = 128
heads = 4
context = 128
[data]
path = "data/shakespeare.txt"
[train]
steps = 30
batch_size = 16
optimizer = "adamw"
lr = 0.001
log_every = 1
eval_every = 30
eval_batches = 4
TOML

train() {  # run name, then loom train arguments; a failure is recorded, not fatal
  local name=$1; shift
  "$LOOM" train "$@" --out "$work" --name "$name" >"$work/$name.out" 2>"$work/$name.err" || true  # its last error line goes into the report
}
run_pair() {  # name, then loom train arguments: the CPU run and the CUDA run
  local name=$1; shift
  train "cpu-$name" "$@"
  train "cuda-$name" "$@" --device cuda
}
# The conformance suite first: every op forward and backward, and the optimizers, against the CPU.
"$LOOM" check --device cuda --json >"$work/check.json" 2>"$work/check.err" || true
run_pair mlp --model mlp --steps 30
run_pair cnn --model cnn --steps 30
run_pair gpt "$work/gpt.toml"
train cuda-gpt-tf32 "$work/gpt.toml" --device cuda --tf32
run_pair gpt-bf16 "$work/gpt.toml" --precision bf16
# Two data-parallel ranks: on one GPU they share it (collectives through host memory), on
# several each has its own (NCCL, from PyTorch's nvidia-nccl wheel); the report says which.
train cuda-gpt-dp2 "$work/gpt.toml" --device cuda --dp 2

report() {  # the JSON report from what has run so far (each speed figure a JSON line, or empty)
  python3 - "$work" "$OUT" "$gpu" "${loom_fp32:-}" "${loom_tf32:-}" "${loom_bf16:-}" "${torch_fp32:-}" "${torch_tf32:-}" "${torch_bf16:-}" <<'PY'
import json, os, sys
work, out, gpu = sys.argv[1:4]

def parsed(s):  # a benchmark's last line: its JSON, its error, or nothing yet
    if not s: return None
    try: return json.loads(s)
    except ValueError: return {"error": s[-2000:]}
loom_fp32, loom_tf32, loom_bf16, torch_fp32, torch_tf32, torch_bf16 = (parsed(s) for s in sys.argv[4:10])

def losses(run):
    path = f"{work}/{run}/metrics.jsonl"
    return [json.loads(l)["loss"] for l in open(path) if '"loss"' in l] if os.path.exists(path) else []

def error(run):
    path = f"{work}/{run}.err"
    text = open(path).read().strip() if os.path.exists(path) else ""
    return text.splitlines()[-1] if text else None

def opening(run):  # the run's first line: its device, and its collectives under --dp
    path = f"{work}/{run}.out"
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return lines[0] if lines else None

def conformance():  # loom check's JSON, or what stopped it
    try: return json.loads(open(f"{work}/check.json").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError): return {"passed": False, "error": error("check")}

checks, ok = [], True
suite = conformance()
ok &= bool(suite.get("passed"))
for name, reference, tolerance in [("cuda-mlp", "cpu-mlp", 1e-4), ("cuda-cnn", "cpu-cnn", 1e-4), ("cuda-gpt", "cpu-gpt", 1e-4),
                                   ("cuda-gpt-tf32", "cpu-gpt", 2e-2), ("cuda-gpt-bf16", "cpu-gpt-bf16", 1e-4),
                                   ("cuda-gpt-bf16", "cpu-gpt", 2e-2), ("cuda-gpt-dp2", "cpu-gpt", 1e-4)]:
    a, b = losses(name), losses(reference)
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b)) if a and len(a) == len(b) else float("inf")
    checks.append({"run": name, "against": reference, "steps": len(a), "max_relative_difference": worst, "tolerance": tolerance,
                   "passed": worst <= tolerance, "error": error(name) or error(reference), "opening": opening(name)})
    ok &= worst <= tolerance

# GPT-2 small, vocabulary 50304: parameters without the position table (nanoGPT's count),
# FLOPs per token 6N + 12 L d T (PaLM's estimate, attention included).
V, T, L, d = 50304, 1024, 12, 768
n = V * d + L * (12 * d * d + 13 * d) + 2 * d
flops_per_token = 6 * n + 12 * L * d * T
peaks = {"H100": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12}, "H200": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12},
         "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12}}
peak = next((p for k, p in peaks.items() if k in gpu), None)

def entry(r, precision):
    if r is None or "error" in r: return r
    e = {"tokens_per_s": r.get("tokens_per_s", r.get("per_s")), "peak_bytes": r.get("peak_bytes"), "step_ms": r.get("step_ms")}
    e["mfu"] = round(e["tokens_per_s"] * flops_per_token / peak[precision], 4) if peak and e["tokens_per_s"] else None
    return e

report = {"gpu": gpu, "workload": "gpt2-small, batch 8 x 1024, AdamW", "flops_per_token": flops_per_token, "correctness": checks,
          "conformance": suite}
if any(r is not None for r in (loom_fp32, loom_tf32, loom_bf16, torch_fp32, torch_tf32, torch_bf16)):
    report["loom"] = {"fp32": entry(loom_fp32, "fp32"), "tf32": entry(loom_tf32, "tf32"), "bf16": entry(loom_bf16, "bf16")}
    report["pytorch_eager"] = {"fp32": entry(torch_fp32, "fp32"), "tf32": entry(torch_tf32, "tf32"), "bf16": entry(torch_bf16, "bf16"),
                               "version": (torch_fp32 or {}).get("torch")}
    for p in ("fp32", "tf32", "bf16"):
        a, b = report["loom"][p], report["pytorch_eager"][p]
        if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
            report[f"loom_over_pytorch_{p}"] = round(a["tokens_per_s"] / b["tokens_per_s"], 3)
json.dump(report, open(out, "w"), indent=2, sort_keys=True)
print(json.dumps(report, indent=2, sort_keys=True))
sys.exit(0 if ok else 1)
PY
}

# The correctness verdicts first: written before any benchmark can fail.
correct=0
report >/dev/null || correct=$?
echo "gpu-check: correctness written to $OUT" >&2
if [ "$SPEED" != 0 ]; then
  last_line() {  # a benchmark's JSON line, or the last line of its error
    local out
    if out=$("$@" 2>"$work/bench.err"); then printf '%s\n' "$out" | tail -1; else tail -1 "$work/bench.err"; fi
  }
  loom_fp32=$(last_line "$LOOM" bench --device cuda --workload gpt2 --steps "$STEPS" --json)
  loom_tf32=$(last_line "$LOOM" bench --device cuda --workload gpt2 --steps "$STEPS" --json --tf32)
  loom_bf16=$(last_line "$LOOM" bench --device cuda --workload gpt2 --steps "$STEPS" --json --precision bf16)
  torch_fp32=$(last_line python3 bench/gpt2_torch.py --precision fp32 --steps "$STEPS")
  torch_tf32=$(last_line python3 bench/gpt2_torch.py --precision tf32 --steps "$STEPS")
  torch_bf16=$(last_line python3 bench/gpt2_torch.py --precision bf16 --steps "$STEPS")
fi
report || correct=$?
exit "$correct"
