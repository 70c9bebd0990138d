#!/usr/bin/env bash
# Runs one stage of `make test` and prints its wall time. Times are appended to
# $BERTH_STAGE_RECORD; `stage.sh --summary` prints them with a count of passed and failed stages.
set -uo pipefail
record="${BERTH_STAGE_RECORD:?BERTH_STAGE_RECORD must name a file}"
mkdir -p "$(dirname "$record")"
summary() {
  echo "== stage times"
  cat "$record" 2>/dev/null
  echo "stages: $(grep -c ' ok ' "$record" 2>/dev/null) passed, $(grep -c ' FAILED ' "$record" 2>/dev/null) failed"
}
if [[ "${1:-}" == "--summary" ]]; then
  summary
  exit 0
fi
name="$1"; shift
echo "== stage ${name}: start $(date -u +%H:%M:%S)"
start=$(date +%s)
"$@"
rc=$?
elapsed=$(( $(date +%s) - start ))
if (( rc == 0 )); then
  printf '  %-28s ok %6ds\n' "$name" "$elapsed" | tee -a "$record"
else
  printf '  %-28s FAILED (exit %d) after %ds\n' "$name" "$rc" "$elapsed" | tee -a "$record"
  summary
fi
exit "$rc"
