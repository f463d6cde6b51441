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
# Libraries the tests load from PyPI wheels, pinned, into a cache outside the tree. Only a
# registry that cannot be reached turns a test that needs one into a skip, which says why.
python3 -m pip --version >/dev/null 2>&1 || bash scripts/setup.sh --python
cache="${XDG_CACHE_HOME:-$HOME/.cache}/loom"
# cached_wheel PACKAGE==VERSION DIR VARIABLE EXTRACT: downloads the wheel and runs the Python
# snippet EXTRACT (argv[1] the wheel, argv[2] DIR; it writes DIR.part and renames it, so a
# cut download leaves nothing that looks whole). A failed download sets VARIABLE to why.
cached_wheel() {
  local spec=$1 dir=$2 variable=$3 extract=$4 wheel_dir
  wheel_dir=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: "$spec" -d "$wheel_dir" >"$wheel_dir/log" 2>&1; then
    python3 -c "import sys, zipfile, os, shutil
z = zipfile.ZipFile(sys.argv[1]); part = sys.argv[2] + '.part'
shutil.rmtree(part, ignore_errors=True)
$extract
shutil.rmtree(sys.argv[2], ignore_errors=True); os.rename(part, sys.argv[2])" "$(ls "$wheel_dir"/*.whl)" "$dir"
  else
    export "$variable=pip could not download $spec: $(tail -1 "$wheel_dir/log")"
    echo "test: ${!variable}" >&2
  fi
  rm -rf "$wheel_dir"
}
# The real NVRTC (CUDA's compiler, no GPU or driver needed): KernelCompileTests compiles every
# CUDA kernel with it.
nvrtc_dir="$cache/nvidia-cuda-nvrtc-13.5.37"
[ -f "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ] ||
  cached_wheel nvidia-cuda-nvrtc==13.5.37 "$nvrtc_dir" LOOM_NVRTC_UNAVAILABLE "z.extractall(part)"
export LOOM_CUDA_LIBS="$nvrtc_dir/nvidia/cu13/lib${LOOM_CUDA_LIBS:+:$LOOM_CUDA_LIBS}"
# The real NCCL (216 MB wheel; only libnccl.so.2 is kept): NCCLLibraryTests loads it and
# resolves every symbol Loom calls (no GPU needed).
nccl_dir="$cache/nvidia-nccl-cu13-2.30.7"
[ -f "$nccl_dir/libnccl.so.2" ] ||
  cached_wheel nvidia-nccl-cu13==2.30.7 "$nccl_dir" LOOM_NCCL_UNAVAILABLE "os.makedirs(part)
with z.open('nvidia/nccl/lib/libnccl.so.2') as src, open(part + '/libnccl.so.2', 'wb') as dst: shutil.copyfileobj(src, dst)"
export LOOM_CUDA_LIBS="$nccl_dir:$LOOM_CUDA_LIBS"
# The XLA:CPU PJRT plugin built from jaxlib 0.11.2's XLA (lammps-jax-pjrt-cpu, 63 MB; the
# plugin `loom` finds first, docs/xla.md): the XLA backend's tests compile and run every op and
# whole training steps on it.
xla_dir="$cache/lammps-jax-pjrt-cpu-0.11.2"
[ -f "$xla_dir/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so" ] ||
  cached_wheel lammps-jax-pjrt-cpu==0.11.2 "$xla_dir" LOOM_XLA_UNAVAILABLE "z.extract('lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so', part)"
export LOOM_PJRT_PLUGIN="${LOOM_PJRT_PLUGIN:-$xla_dir/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so}"
# libtpu (Google's TPU runtime, a PJRT plugin; 205 MB, only libtpu.so kept): it cannot run
# without a TPU but compiles for one, so TPUCompileTests compiles every model's step programs
# for TPU v5e and v6e slices with it.
libtpu_dir="$cache/libtpu-0.0.51"
[ -f "$libtpu_dir/libtpu/libtpu.so" ] ||
  cached_wheel libtpu==0.0.51 "$libtpu_dir" LOOM_LIBTPU_UNAVAILABLE "z.extract('libtpu/libtpu.so', part)"
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
