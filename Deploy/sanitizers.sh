#!/usr/bin/env bash
# Builds tern with ThreadSanitizer, then AddressSanitizer, and runs the integration tests
# against each binary (the tests start tern with 2 worker threads). Any report fails the run:
# a sanitized tern that finds a race or a memory error exits, and the tests see it die.
#   Deploy/sanitizers.sh [test-filter]
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-"MemcacheProxyTests|RedisProxyTests|WarmupTests|OperationsTests|RobustnessTests|IsolationTests|RedisSessionTests|ObservabilityTests|ControlEndpointTests|RedisClusterTests|TLSTests|TLSDiscoveryTests|LargeValueTests"}
swift build --build-tests >/dev/null
for sanitizer in thread address; do
    scratch=".build-$sanitizer"
    swift build --product tern --scratch-path "$scratch" -Xswiftc -sanitize=$sanitizer >/dev/null
    binary="$(swift build --product tern --scratch-path "$scratch" --show-bin-path)/tern"
    echo "== integration tests against tern built with -sanitize=$sanitizer"
    TERN_BINARY="$binary" TERN_SANITIZED="$sanitizer" \
    TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0" \
    ASAN_OPTIONS="halt_on_error=1 detect_leaks=0" \
        swift test --skip-build --disable-swift-testing --filter "$filter"
done
