#!/usr/bin/env bash
# Builds tern with ThreadSanitizer, then AddressSanitizer, and runs integration tests against
# each binary (the tests start tern with 2 worker threads). Any report fails the run: a
# sanitized tern that finds a race or a memory error exits, and the tests see it die.
#   Deploy/sanitizers.sh            CI: each sanitizer under the suites where it finds things
#   Deploy/sanitizers.sh all        every integration class named below under both
#   Deploy/sanitizers.sh 'Regex'    that XCTest filter under both
#
# AddressSanitizer runs under every class that exercises the request path: a memory error can
# hide in any of them. ThreadSanitizer runs where threads meet: reloads, drains and the
# control thread (operations, control endpoint, observability), the cluster and Sentinel
# discovery threads, TLS certificate reloads, worker activation and client hand-offs, the
# stats poller, and accepts spread over the workers. A request served by one worker touches no
# state another thread writes, so the rest of the request-path classes add time, not findings,
# under TSan. They ran under it until the sixteenth session; its real findings (the worker
# inbox during client hand-offs, threads left at exit) came from the paths kept here, and
# `Deploy/sanitizers.sh all` still runs everything under both.
set -euo pipefail
cd "$(dirname "$0")/.."
everything="MemcacheProxyTests|RedisProxyTests|WarmupTests|OperationsTests|RobustnessTests|IsolationTests|RedisSessionTests|ObservabilityTests|ControlEndpointTests|RedisClusterTests|TLSTests|TLSDiscoveryTests|LargeValueTests|MemcacheBinaryTests|WorkerScalingTests|RedisSentinelTests"
address_filter=$everything
thread_filter="OperationsTests|ObservabilityTests|ControlEndpointTests|RedisClusterTests|RedisSentinelTests|TLSTests|TLSDiscoveryTests|WorkerScalingTests|WarmupTests/testReload|MemcacheProxyTests/testStats|RobustnessTests/testTenThousand"
# Skipped under both: a test of the scaling policy that keeps every CPU busy beside Tern for
# 10 s; the code it reaches (the idle-CPU meter on the main thread) runs in every elastic test.
skip="WorkerScalingTests.testBusyWorkerOnSaturatedCoresStaysAlone"
case "${1:-}" in
    "") ;;
    all) thread_filter=$everything ;;
    *) thread_filter=$1; address_filter=$1 ;;
esac
swift build --build-tests >/dev/null
for sanitizer in thread address; do
    scratch=".build-$sanitizer"
    filter=$thread_filter
    if [ "$sanitizer" = address ]; then filter=$address_filter; fi
    swift build --product tern --scratch-path "$scratch" -Xswiftc -sanitize=$sanitizer >/dev/null
    binary="$(swift build --product tern --scratch-path "$scratch" --show-bin-path)/tern"
    echo "== integration tests against tern built with -sanitize=$sanitizer"
    TERN_BINARY="$binary" TERN_SANITIZED="$sanitizer" \
    TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0" \
    ASAN_OPTIONS="halt_on_error=1 detect_leaks=0" \
        swift test --skip-build --disable-swift-testing --filter "$filter" --skip "$skip"
done
