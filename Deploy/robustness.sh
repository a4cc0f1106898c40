#!/usr/bin/env bash
# The robustness job: sanitizer builds under the integration tests, then every fuzz target,
# then the differential fuzzer's smoke.
#   Deploy/robustness.sh            CI smoke: fuzz 15 s per target
#   Deploy/robustness.sh 600        a longer local fuzz run (600 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
Deploy/sanitizers.sh
fuzz/run.sh "$seconds"
# Differential smoke: hostile requests through Tern and straight to real servers, with innocent
# canary clients that must only ever see their own replies (fuzz/differential.py; the long run
# is in README, "Differential fuzzing").
python3 fuzz/differential.py --tern "$(swift build --show-bin-path)/tern" --seconds "$((seconds < 15 ? seconds : 15))" --seed ci
# AUTH/HELLO sessions on a pool with users, every reply compared with a redis-server that has
# the same users (fails on any mismatch).
python3 fuzz/differential.py --tern "$(swift build --show-bin-path)/tern" --protocol auth --seconds "$((seconds < 10 ? seconds : 10))" --seed ci
