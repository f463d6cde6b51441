#!/usr/bin/env bash
# Soak test (not in CI): the example GPT under dp 2 x pp 2 (4 MPI ranks, `loom launch
# --max-restarts`) trained for about half an hour while a rank, drawn at random, is killed
# with SIGKILL every KILL_EVERY seconds; then the same run uninterrupted. It passes when
# the killed run's losses equal the uninterrupted run's, bit for bit, at every logged step,
# and prints each rank's resident memory over the run (sampled every 10 s), so that growth
# across restarts shows.
#
#   bash scripts/soak.sh                      # ~14000 steps, a kill every 180 s
#   STEPS=600 KILL_EVERY=30 EVAL_EVERY=100 bash scripts/soak.sh   # a short one
#
# A kill must come less often than a checkpoint plus a restart (~10 s here), or the job
# never gets past its last checkpoint.
#
# Writes OUT (runs/soak): killed/ and whole/ run directories, kills.log, memory.csv and
# report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-14000}
every=${KILL_EVERY:-180}
checkpoint_every=${EVAL_EVERY:-250}
out=${OUT:-runs/soak}
RANDOM=${SEED:-1}
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
swift build -c release --product loom >&2
loom=$PWD/.build/release/loom
rm -rf "$out" && mkdir -p "$out"
sed "s/^eval_every = .*/eval_every = $checkpoint_every/" examples/shakespeare-gpt.toml >"$out/soak.toml"
common=(train "$out/soak.toml" --dp 2 --pp 2 --steps "$steps" --out "$out")

# The pid of the loom process that is rank $1 of the job training run $2.
rank_pid() {
  for d in /proc/[0-9]*; do
    grep -qzx "OMPI_COMM_WORLD_RANK=$1" "$d/environ" 2>/dev/null || continue
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null || true)
    if [[ "$cmd" == *"--name $2"* ]]; then basename "$d"; return 0; fi
  done
  return 1
}

# Resident memory of every rank of run $1, every 10 s, into memory.csv.
sample_memory() {
  echo "seconds,rank,pid,rss_mib" >"$out/memory.csv"
  local t0=$SECONDS
  while true; do
    for r in 0 1 2 3; do
      if pid=$(rank_pid "$r" "$1"); then
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$((SECONDS - t0)),$r,$pid,$((rss / 1024))" >>"$out/memory.csv"
      fi
    done
    sleep 10
  done
}

# Every $every seconds, SIGKILL a rank drawn at random, logged with the last step logged.
kill_ranks() {
  local t0=$SECONDS
  while true; do
    sleep "$every"
    r=$((RANDOM % 4))
    if pid=$(rank_pid "$r" killed); then
      last=$(tail -1 "$out/killed/metrics.jsonl" 2>/dev/null | grep -o '"step":[0-9]*' || true)
      kill -9 "$pid" && echo "$((SECONDS - t0)) s: killed rank $r (pid $pid), last logged ${last:-none}" | tee -a "$out/kills.log" >&2
    fi
  done
}

start=$SECONDS
sample_memory killed & sampler=$!
kill_ranks & killer=$!
status=0
"$loom" launch -n 4 --max-restarts 1000 -- "${common[@]}" --name killed >"$out/killed.out" 2>"$out/killed.err" || status=$?
kill "$killer" "$sampler" 2>/dev/null || true
wait 2>/dev/null || true
killed_seconds=$((SECONDS - start))
[ "$status" = 0 ] || { echo "soak: the killed job failed ($status): $(tail -3 "$out/killed.err")" >&2; exit 1; }

start=$SECONDS
"$loom" launch -n 4 -- "${common[@]}" --name whole >"$out/whole.out" 2>"$out/whole.err"
whole_seconds=$((SECONDS - start))

python3 - "$out" "$killed_seconds" "$whole_seconds" "$every" "$checkpoint_every" <<'EOF'
import json, statistics, sys
out, killed_s, whole_s, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def losses(run):
    # The exact text of each logged loss (bit-identical floats print identically).
    got = {}
    for line in open(f"{out}/{run}/metrics.jsonl"):
        o = json.loads(line)
        if "loss" in o:
            got[o["step"]] = line.split('"loss":')[1].split(",")[0].split("}")[0]
    return got
a, b = losses("killed"), losses("whole")
differ = [s for s in b if a.get(s) != b[s]]
restarts = sum(1 for l in open(f"{out}/killed.err") if "; restart " in l)
kills = sum(1 for _ in open(f"{out}/kills.log")) if __import__("os").path.exists(f"{out}/kills.log") else 0
rows = [l.strip().split(",") for l in open(f"{out}/memory.csv")][1:]
report = [f"# Soak: dp 2 x pp 2, {max(b)} steps, a rank killed every {every} s, a checkpoint every {sys.argv[5]} steps",
          "",
          f"- killed run: {killed_s} s, {kills} ranks killed, {restarts} restarts from the last checkpoint",
          f"- uninterrupted run: {whole_s} s",
          f"- logged losses compared: {len(b)}; equal bit for bit: {len(b) - len(differ)}" + (f"; first difference at step {min(differ)}" if differ else ""),
          "",
          "Resident memory per rank (MiB), over each process's life after its first 30 s:",
          "",
          "| rank | processes | first process: median | last process: median | min | max |",
          "| ---: | ---: | ---: | ---: | ---: | ---: |"]
for r in "0123":
    by_pid = {}
    for t, rank, pid, rss in rows:
        if rank == r: by_pid.setdefault(pid, []).append((int(t), int(rss)))
    lives = [[rss for t, rss in v if t - v[0][0] >= 30] or [v[-1][1]] for v in by_pid.values()]
    if not lives: continue
    flat = [x for l in lives for x in l]
    report.append(f"| {r} | {len(lives)} | {statistics.median(lives[0]):.0f} | {statistics.median(lives[-1]):.0f} | {min(flat)} | {max(flat)} |")
open(f"{out}/report.md", "w").write("\n".join(report) + "\n")
print("\n".join(report))
sys.exit(1 if differ or len(b) == 0 else 0)
EOF
