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
swift build -c release --product loom
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
