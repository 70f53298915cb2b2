#!/usr/bin/env bash
# A long, niced atheris session that keeps going after a finding (libFuzzer stops at the first one).
#
#   fuzz/run_session.sh TARGET MINUTES WORK_DIR [extra libFuzzer flags...]
#
# TARGET is container or decode. WORK_DIR gets corpus/ (libFuzzer's growing corpus, seeded from
# fuzz/seeds), artifacts/ (crash-*, timeout-*, oom-* inputs) and session.log. Run from the repository root.
set -u
target=${1:?target: container or decode}
minutes=${2:?minutes}
work=${3:?work dir}
shift 3
python=${PYTHON:-python}
mkdir -p "$work/corpus" "$work/artifacts"
end=$(( $(date +%s) + minutes * 60 ))
run=0
while :; do
  left=$(( end - $(date +%s) ))
  [ "$left" -le 10 ] && break
  run=$((run + 1))
  echo "=== run $run: $left s left ($(date -Is))" >>"$work/session.log"
  nice -n 10 "$python" fuzz/fuzz_jac.py atheris --target "$target" "$work/corpus" fuzz/seeds -- \
    -max_total_time="$left" -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" \
    >>"$work/session.log" 2>&1
  echo "=== run $run exited with $? ($(date -Is))" >>"$work/session.log"
done
