#!/usr/bin/env bash
# Builds a loom that runs on a machine with no Swift toolchain and no MPI (a GPU box):
# the Swift standard library and Foundation linked statically, and the shared libraries
# it still needs (OpenBLAS and its Fortran runtime, Open MPI's, zlib) gathered next to it.
#
#   bash scripts/build-static.sh            # -> .dist/loom/ (bin/loom, lib/, data/, loom)
#   .dist/loom/loom train                   # the wrapper sets LD_LIBRARY_PATH to lib/
#   bash scripts/build-static.sh --archive  # also .dist/loom.tar.xz (~29 MB, where .dist/loom is ~140 MB with OpenBLAS and oneDNN):
#                                           # what travels to a GPU machine; scripts/gpu-check.sh unpacks it
#
# The C library, libm, libstdc++ and libgcc_s are the target machine's own (glibc 2.36
# here; newer there is fine). A single-process run never initialises MPI, so Open MPI's
# plugins and mpirun are not needed for it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product loom --static-swift-stdlib --build-path .build-static
out=.dist/loom
rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
cp .build-static/release/loom "$out/bin/loom"
strip "$out/bin/loom"
# Every shared library the binary loads, except those every Linux system has.
ldd "$out/bin/loom" | awk '/=> \// { print $3 }' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
cp -r data "$out/data"
cat > "$out/loom" <<'WRAPPER'
#!/bin/sh
# Runs the bundled loom with its libraries.
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/loom" "$@"
WRAPPER
chmod +x "$out/loom"
echo "build-static: $out: bin/loom $(du -h "$out/bin/loom" | cut -f1), lib/ $(du -sh "$out/lib" | cut -f1) ($(ls "$out/lib" | wc -l) libraries)"
if [ "${1:-}" = "--archive" ]; then
  tar -C .dist -cJf .dist/loom.tar.xz loom
  echo "build-static: .dist/loom.tar.xz $(du -h .dist/loom.tar.xz | cut -f1)"
fi
