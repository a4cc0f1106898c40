#!/usr/bin/env bash
# Runs every test: unit tests in memory, integration tests against real memcached and
# redis-server processes that the tests start on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
Deploy/install-packages.sh
swift build --build-tests
swift test --disable-swift-testing
