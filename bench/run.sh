#!/usr/bin/env bash
# The benchmark in one command: installs the tools, builds Tern in release mode, runs
# bench.py (direct vs nutcracker vs Tern, same loads, one run). Pass --write to update
# bench/RESULTS.md; --runs N, --seconds S, --only NAME to narrow it.
set -euo pipefail
cd "$(dirname "$0")/.."
Deploy/install-packages.sh
missing=()
for package in nutcracker libmemcached-tools redis-tools; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
swift build -c release --product tern
exec python3 bench/bench.py "$@"
