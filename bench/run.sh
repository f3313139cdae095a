#!/usr/bin/env bash
# npm run bench: builds dist/vmhook and, in the same run, a bare bun
# hello-world as the baseline, then times both (bench/bench.ts); then the
# refusal of an impossible hugepages request on a real kernel in the
# test/kernel guest (bench/hugepages-guest.ts).
#   ITERATIONS=1000 npm run bench
set -euo pipefail
cd "$(dirname "$0")/.."
bun=node_modules/.bin/bun
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm run --silent build >/dev/null
"$bun" build --compile --minify bench/hello.ts --outfile "$work/hello" >/dev/null
cp dist/vmhook "$work/vmhook" # a rebuild meanwhile must not change what is measured
"$bun" bench/bench.ts "$work/hello" "$work/vmhook" "${ITERATIONS:-300}"
VMHOOK_GUEST_BINARY="$work/vmhook" "$bun" bench/hugepages-guest.ts
