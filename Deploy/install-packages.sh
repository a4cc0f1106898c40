#!/usr/bin/env bash
# Installs the Debian packages Tern's build, tests and demo need, when any is missing.
set -euo pipefail
# python3-pylibmc and python3-memcache: real client libraries the placement tests compare with;
# libmemcached-tools: libmemcached's own memcping and memcstat, which check the version Tern reports;
# util-linux: taskset, for the default-worker-count test, and unshare; iproute2: a test's private
# network namespace brings its loopback up with it; redis-tools (redis-cli),
# netcat-openbsd (nc) and curl: the demo's copy-paste commands; libssl-dev: TLS (Tern links
# OpenSSL); openssl: the tests make their certificates with it.
packages=(libev-dev libssl-dev openssl memcached redis-server redis-tools python3 python3-pylibmc python3-memcache util-linux
          libmemcached-tools iproute2 netcat-openbsd curl)
# prometheus: for promtool, which checks Deploy/monitoring's alert rules and Tern's /metrics;
# installed without its recommends (node exporter, IPMI and SMART tools). Its server is not run.
lean_packages=(prometheus)
missing_of() {
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
    done
}
mapfile -t missing < <(missing_of "${packages[@]}")
mapfile -t missing_lean < <(missing_of "${lean_packages[@]}")
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_lean[@]} -gt 0 ]; then
    echo "installing: ${missing[*]} ${missing_lean[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ${#missing_lean[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing_lean[@]}" >/dev/null
        # The package starts a Prometheus server where services start on install; only promtool is wanted.
        if command -v systemctl >/dev/null 2>&1; then
            $sudo_cmd systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    fi
fi
# redis-py >= 5 (it sends CLIENT SETINFO on connect) for the Redis client test, from PyPI.
if ! python3 -c 'import redis, sys; sys.exit(int(redis.__version__.split(".")[0]) < 5)' 2>/dev/null; then
    python3 -m pip install -q 'redis>=5,<6' 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'redis>=5,<6'
fi
# pymemcache (its tls_context) for the memcached TLS test, from PyPI, beside redis-py.
if ! python3 -c 'import pymemcache' 2>/dev/null; then
    python3 -m pip install -q 'pymemcache>=4,<5' 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'pymemcache>=4,<5'
fi
# python-binary-memcached (bmemcached), a second binary-protocol client for the binary front's
# tests, from PyPI; the tests skip it when it cannot be installed.
if ! python3 -c 'import bmemcached' 2>/dev/null; then
    python3 -m pip install -q python-binary-memcached 2>/dev/null \
        || python3 -m pip install -q --break-system-packages python-binary-memcached 2>/dev/null || true
fi
# The Debian packages start system-wide daemons; Tern's tests and demo run their own.
if command -v systemctl >/dev/null 2>&1; then
    systemctl stop memcached redis-server >/dev/null 2>&1 || true
fi
