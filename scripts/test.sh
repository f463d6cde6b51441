#!/usr/bin/env bash
# The test command: system packages if missing, then the whole suite in release mode
# (the end-to-end tests train real models with the real binary). Ends with one line,
# "tests: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
bash scripts/setup.sh
# The Python safetensors check runs when the package can be installed (else it reports skipped).
python3 -c "import safetensors.numpy" 2>/dev/null || python3 -m pip install -q safetensors numpy >/dev/null 2>&1 || true
# The real NVRTC (CUDA's compiler, no GPU or driver needed) from PyPI, into a cache
# outside the tree: KernelCompileTests compiles every CUDA kernel with it. Only a registry
# that cannot be reached turns that test into a skip, which says so.
nvrtc_version=13.5.37
nvrtc_dir="${XDG_CACHE_HOME:-$HOME/.cache}/loom/nvidia-cuda-nvrtc-$nvrtc_version"
if [ ! -f "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  python3 -m pip --version >/dev/null 2>&1 || bash scripts/setup.sh --python
  wheel_dir=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: "nvidia-cuda-nvrtc==$nvrtc_version" -d "$wheel_dir" >"$wheel_dir/log" 2>&1; then
    python3 -c "import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]).extractall(sys.argv[2])" "$wheel_dir" "$nvrtc_dir"
  else
    export LOOM_NVRTC_UNAVAILABLE="pip could not download nvidia-cuda-nvrtc==$nvrtc_version: $(tail -1 "$wheel_dir/log")"
    echo "test: $LOOM_NVRTC_UNAVAILABLE" >&2
  fi
  rm -rf "$wheel_dir"
fi
export LOOM_CUDA_LIBS="$nvrtc_dir/nvidia/cu13/lib${LOOM_CUDA_LIBS:+:$LOOM_CUDA_LIBS}"
# The real NCCL (216 MB wheel; only libnccl.so.2 is kept): NCCLLibraryTests loads it and
# resolves every symbol Loom calls (no GPU needed). Same rule: only a failed download skips.
nccl_version=2.30.7
nccl_dir="${XDG_CACHE_HOME:-$HOME/.cache}/loom/nvidia-nccl-cu13-$nccl_version"
if [ ! -f "$nccl_dir/libnccl.so.2" ]; then
  wheel_dir=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: "nvidia-nccl-cu13==$nccl_version" -d "$wheel_dir" >"$wheel_dir/log" 2>&1; then
    python3 -c "import sys, zipfile, glob, os, shutil
z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); os.makedirs(sys.argv[2], exist_ok=True)
with z.open('nvidia/nccl/lib/libnccl.so.2') as src, open(sys.argv[2] + '/libnccl.so.2.part', 'wb') as dst: shutil.copyfileobj(src, dst)
os.rename(sys.argv[2] + '/libnccl.so.2.part', sys.argv[2] + '/libnccl.so.2')" "$wheel_dir" "$nccl_dir"
  else
    export LOOM_NCCL_UNAVAILABLE="pip could not download nvidia-nccl-cu13==$nccl_version: $(tail -1 "$wheel_dir/log")"
    echo "test: $LOOM_NCCL_UNAVAILABLE" >&2
  fi
  rm -rf "$wheel_dir"
fi
export LOOM_CUDA_LIBS="$nccl_dir:$LOOM_CUDA_LIBS"
# The XLA:CPU PJRT plugin (OpenXLA's xla-cpu-pjrt wheel, pinned): the XLA backend's tests
# compile and run every op and whole training steps on it. Same rule: only a failed
# download skips, and says so.
xla_version=0.0.1
xla_dir="${XDG_CACHE_HOME:-$HOME/.cache}/loom/xla-cpu-pjrt-$xla_version"
if [ ! -f "$xla_dir/xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so" ]; then
  wheel_dir=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: "xla-cpu-pjrt==$xla_version" -d "$wheel_dir" >"$wheel_dir/log" 2>&1; then
    python3 -c "import sys, zipfile, glob, os
z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); part = sys.argv[2] + '.part'
z.extractall(part, [n for n in z.namelist() if n.startswith('xla_plugins/')]); os.rename(part, sys.argv[2])" "$wheel_dir" "$xla_dir"
  else
    export LOOM_XLA_UNAVAILABLE="pip could not download xla-cpu-pjrt==$xla_version: $(tail -1 "$wheel_dir/log")"
    echo "test: $LOOM_XLA_UNAVAILABLE" >&2
  fi
  rm -rf "$wheel_dir"
fi
export LOOM_PJRT_PLUGIN="${LOOM_PJRT_PLUGIN:-$xla_dir/xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so}"
# libtpu (Google's TPU runtime, a PJRT plugin; 205 MB wheel, only libtpu.so kept): it cannot
# run without a TPU but compiles for one, so TPUCompileTests compiles every model's step
# programs for TPU v5e and v6e slices with it. Same rule: only a failed download skips.
libtpu_version=0.0.51
libtpu_dir="${XDG_CACHE_HOME:-$HOME/.cache}/loom/libtpu-$libtpu_version"
if [ ! -f "$libtpu_dir/libtpu/libtpu.so" ]; then
  wheel_dir=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: "libtpu==$libtpu_version" -d "$wheel_dir" >"$wheel_dir/log" 2>&1; then
    python3 -c "import sys, zipfile, glob, os
z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); part = sys.argv[2] + '.part'
z.extract('libtpu/libtpu.so', part); os.rename(part, sys.argv[2])" "$wheel_dir" "$libtpu_dir"
  else
    export LOOM_LIBTPU_UNAVAILABLE="pip could not download libtpu==$libtpu_version: $(tail -1 "$wheel_dir/log")"
    echo "test: $LOOM_LIBTPU_UNAVAILABLE" >&2
  fi
  rm -rf "$wheel_dir"
fi
export LOOM_LIBTPU="${LOOM_LIBTPU:-$libtpu_dir/libtpu/libtpu.so}"
swift build -c release --product loom
swift build -c release --product EmbeddingExample  # examples/embedding, run by EmbeddingExampleTests
# Loom's CUDA emulator (the CUDA backend's tests run it on the CPU).
swift build -c release --product LoomCUDAEmulator
log=$(mktemp)
set +e
swift test -c release --disable-swift-testing "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# XCTest's last summary: "Executed N tests, with [K tests skipped and] F failures ..."
summary=$(grep -E "^\s*Executed [0-9]+ tests?, with" "$log" | tail -1 || true)
executed=$(sed -E 's/.*Executed ([0-9]+) test.*/\1/' <<<"$summary")
skipped=$(grep -oE "[0-9]+ tests? skipped" <<<"$summary" | grep -oE "^[0-9]+" || echo 0)
failed=$(grep -oE "[0-9]+ failures?" <<<"$summary" | grep -oE "^[0-9]+" || echo 0)
rm -f "$log"
if [ -z "$summary" ]; then echo "tests: no XCTest summary found"; exit 1; fi
echo "tests: $((executed - skipped - failed)) passed, $failed failed, $skipped skipped"
exit "$status"
