#!/usr/bin/env bash
# All of vmhook's tests: typecheck, build, unit tests on a simulated host,
# then the real ones (libvirt, kernel). Each suite is a uvu run under bun (the
# runtime of the shipped binary). The last line is "N passed, N failed".
#   VMHOOK_TESTS="unit libvirt"  runs only those suites (net: real nftables in network namespaces).
set -u
cd "$(dirname "$0")/.."
suites=${VMHOOK_TESTS:-"unit net libvirt kernel"}
bun=node_modules/.bin/bun
passed=0 failed=0 skipped=0

# A one-test "suite" for a command: typecheck, build.
check() {
  local name=$1
  shift
  echo "== $name: $*"
  if "$@"; then passed=$((passed + 1)); else echo "FAIL: $name"; failed=$((failed + 1)); fi
}

suite() {
  local dir=test/$1 log
  # A misspelt suite in VMHOOK_TESTS must not end in "0 failed" with nothing run.
  if [ ! -d "$dir" ]; then
    echo "FAIL: there is no test suite $dir (the suites: unit net libvirt kernel)"
    failed=$((failed + 1))
    return
  fi
  echo "== $1 tests ($dir)"
  log=$(mktemp)
  "$bun" node_modules/uvu/bin.js "$dir" '\.test\.ts$' 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  # uvu's summary, without colour codes
  local clean total pass skip
  clean=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
  total=$(grep -oE 'Total: +[0-9]+' <<<"$clean" | tail -1 | grep -oE '[0-9]+$')
  pass=$(grep -oE 'Passed: +[0-9]+' <<<"$clean" | tail -1 | grep -oE '[0-9]+$')
  skip=$(grep -oE 'Skipped: +[0-9]+' <<<"$clean" | tail -1 | grep -oE '[0-9]+$')
  if [ -z "$total" ]; then
    echo "FAIL: $1 suite crashed before uvu's summary (exit $rc)"
    failed=$((failed + 1))
  elif [ "$total" -eq 0 ] && [ "${skip:-0}" -eq 0 ]; then
    # every suite registers its tests, run or skipped: none at all means none was found
    echo "FAIL: $1 suite ran no test and skipped none"
    failed=$((failed + 1))
  else
    passed=$((passed + pass))
    skipped=$((skipped + ${skip:-0}))
    failed=$((failed + total - pass))
    if [ "$rc" -ne 0 ] && [ "$total" -eq "$pass" ]; then
      echo "FAIL: $1 suite exited $rc"
      failed=$((failed + 1))
    fi
  fi
  rm -f "$log"
}

check typecheck node_modules/.bin/tsc -p .
check build npm run --silent build
for s in $suites; do suite "$s"; done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
