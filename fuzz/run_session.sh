#!/usr/bin/env bash
# A long, niced atheris session that keeps going after a finding (libFuzzer stops at the first one).
#
#   fuzz/run_session.sh TARGET MINUTES WORK_DIR [extra libFuzzer flags...]
#
# TARGET is container or decode. WORK_DIR gets corpus/ (libFuzzer's growing corpus, seeded from
# fuzz/seeds), artifacts/ (crash-*, timeout-*, oom-*, finding-* inputs) and session.log. Runs from any
# directory; PYTHON names the interpreter (default: python).
#
# A run that leaves a new file in artifacts/ is a finding, and the next run starts. A run that ends
# without one within QUICK_SECONDS (default 10) failed to start (atheris missing, a bad flag) or stopped
# on its own (-runs=N): the session stops with its status (1 if that was 0). A longer run that fails
# without a finding (killed from outside, say) is restarted, three in a row stop the session with the
# last one's status. Otherwise the status is 1 if there were findings, else 0. When the session stops
# on a failure, the end of session.log goes to stderr.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=${1:?target: container or decode}
minutes=${2:?minutes}
work=${3:?work dir}
shift 3
python=${PYTHON:-python}
quick=${QUICK_SECONDS:-10}
mkdir -p "$work/corpus" "$work/artifacts" || exit 1
log="$work/session.log"
count_artifacts() { find "$work/artifacts" -type f | wc -l; }
end=$(( $(date +%s) + minutes * 60 ))
run=0
findings=0
failures=0
while :; do
  left=$(( end - $(date +%s) ))
  [ "$left" -le 10 ] && break
  run=$((run + 1))
  before=$(count_artifacts)
  started=$(date +%s)
  echo "=== run $run: $left s left ($(date -Is))" >>"$log"
  nice -n 10 "$python" "$here/fuzz_jac.py" atheris --target "$target" "$work/corpus" "$here/seeds" -- \
    -max_total_time="$left" -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" \
    >>"$log" 2>&1
  status=$?
  took=$(( $(date +%s) - started ))
  new=$(( $(count_artifacts) - before ))
  echo "=== run $run exited with $status after $took s, $new new artifacts ($(date -Is))" >>"$log"
  if [ "$new" -gt 0 ]; then
    findings=$((findings + new))
    failures=0
    continue
  fi
  if [ "$took" -lt "$quick" ] || { [ "$status" -ne 0 ] && [ $((failures += 1)) -ge 3 ]; }; then
    echo "run_session.sh: run $run exited with status $status after $took s without a finding;" \
      "the end of $log:" >&2
    tail -n 20 "$log" >&2
    [ "$status" -eq 0 ] && status=1
    exit "$status"
  fi
  [ "$status" -eq 0 ] && break  # libFuzzer's time is up
done
echo "=== session done: $run runs, $findings findings ($(date -Is))" >>"$log"
[ "$findings" -eq 0 ]
