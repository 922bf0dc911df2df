#!/usr/bin/env bash
# Stress the 4-forced-CPU-device tests for the all-reduce abort ("only 3 of them arrived"):
# RUNS runs of the given test files, two side by side on the machine's cores.
# Usage: bash .ci/stress_devices.sh RUNS TEST_FILE... (from the repository root)
# Prints one line per run and a last line "aborts: A of RUNS"; exits 1 if any run aborted.
set -uo pipefail
runs=${1:?RUNS}
shift
out=$(mktemp -d)
one() {
  local i=$1
  shift
  python -m pytest -q -p no:cacheprovider "$@" >"$out/run$i.log" 2>&1
  local rc=$?
  local aborted=no
  if [[ $rc -ge 128 ]] || grep -q "Termination timeout\|Fatal Python error: Aborted" "$out/run$i.log"; then aborted=yes; fi
  echo "run $i: exit $rc, aborted $aborted, $(tail -n 1 "$out/run$i.log")"
}
for ((i = 1; i <= runs; i += 2)); do
  one "$i" "$@" &
  if ((i + 1 <= runs)); then one $((i + 1)) "$@" & fi
  wait
done | tee "$out/summary.txt"
aborts=$(grep -c "aborted yes" "$out/summary.txt")
echo "aborts: $aborts of $runs (logs in $out)"
[[ $aborts -eq 0 ]]
