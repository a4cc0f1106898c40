#!/usr/bin/env bash
# The robustness job: sanitizer builds under the integration tests, then every fuzz target.
#   Deploy/robustness.sh            CI smoke: fuzz 20 s per target
#   Deploy/robustness.sh 600        a longer local fuzz run (600 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
Deploy/sanitizers.sh
fuzz/run.sh "$seconds"
