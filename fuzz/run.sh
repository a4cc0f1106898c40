#!/usr/bin/env bash
# Runs every libFuzzer target for a bounded time (default 60 s each) with AddressSanitizer.
#   fuzz/run.sh [seconds-per-target] [target...]
# New inputs that add coverage are kept in fuzz/corpus/<target>; a crash leaves its input in
# fuzz/findings/ — copy it to fuzz/regressions/<target>/ so the unit tests replay it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(memcache-request memcache-reply resp-request resp-reply config binary-request binary-translation redis-glob)
flags=(-Xswiftc -DFUZZING -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library)
swift build --product tern-fuzz --scratch-path .build-fuzz "${flags[@]}" 2>&1 | grep -E "error:" || true
swift build --product tern-fuzz --scratch-path .build-fuzz "${flags[@]}" >/dev/null
binary=$(swift build --product tern-fuzz --scratch-path .build-fuzz "${flags[@]}" --show-bin-path 2>/dev/null)/tern-fuzz
mkdir -p fuzz/findings
status=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="fuzz/findings/$target.log"
    if TERN_FUZZ_TARGET=$target "$binary" "fuzz/corpus/$target" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/findings/$target-" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" || echo "?")
        echo "fuzz $target: ${seconds}s, $runs executions, no findings"
    else
        echo "fuzz $target: FINDING (see $log and fuzz/findings/$target-*)"
        tail -30 "$log"
        status=1
    fi
done
exit $status
