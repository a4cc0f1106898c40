#!/usr/bin/env bash
# Heap allocations per request in steady state, for single-key get/set on both protocols:
# runs a release tern under an LD_PRELOAD malloc counter, warms it up, then counts the
# allocations made while a known number of requests pass, on the worker thread and in all
# threads; then split requests (Redis MGET and memcached multi-gets over two servers).
#   bench/allocations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
gcc -shared -fPIC -O2 -o /tmp/tern_malloc_count.so bench/malloc_count.c -ldl
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mc=$(free_port); rd=$(free_port); tm=$(free_port); tr=$(free_port)
mc2=$(free_port); rd2=$(free_port); tm2=$(free_port); tr2=$(free_port)
user=(); [ "$(id -u)" -eq 0 ] && user=(-u root)
memcached -p "$mc" -l 127.0.0.1 -U 0 "${user[@]}" & redis-server --port "$rd" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
memcached -p "$mc2" -l 127.0.0.1 -U 0 "${user[@]}" & redis-server --port "$rd2" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
printf 'm:\n  listen: 127.0.0.1:%s\n  servers:\n   - 127.0.0.1:%s:1\nr:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n' "$mc" "$mc" "$tr" "$rd" \
    | sed "s/listen: 127.0.0.1:$mc/listen: 127.0.0.1:$tm/" > "$work/tern.yml"
printf 'm2:\n  listen: 127.0.0.1:%s\n  servers:\n   - 127.0.0.1:%s:1\n   - 127.0.0.1:%s:1\nr2:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n   - 127.0.0.1:%s:1\n' \
    "$tm2" "$mc" "$mc2" "$tr2" "$rd" "$rd2" >> "$work/tern.yml"
sleep 0.5
MALLOC_COUNT_FILE="$work/count" LD_PRELOAD=/tmp/tern_malloc_count.so .build/release/tern -c "$work/tern.yml" --threads 1 --no-stats -v 3 &
tern=$!
sleep 1
count() { kill -PWR "$tern"; sleep 0.3; cat "$work/count"; }
# The counter reports all threads and the worker threads (tern-worker-N) apart: the other
# threads' work is once a second or less (the INFO poller, control), not per request.
measure() { # name, command
    eval "$2" >/dev/null 2>&1   # warm-up: buffers, slot pool, connections
    local before; before=($(count))
    eval "$2" >/dev/null 2>&1
    local after; after=($(count))
    local all=$(( after[0] - before[0] )) workers=$(( after[1] - before[1] ))
    echo "$1: $workers allocations on the worker thread for $3 requests ($(python3 -c "print(f'{$workers / $3:.4f}')") per request); $all in all threads"
}
# 10 client connections per run: what does not grow with the request count is per connection.
measure "redis GET P1" "redis-benchmark -p $tr -t get -n 50000 -c 10 -r 1000 -d 32" 50000
measure "redis GET P1 (4x requests)" "redis-benchmark -p $tr -t get -n 200000 -c 10 -r 1000 -d 32" 200000
measure "redis SET P1" "redis-benchmark -p $tr -t set -n 50000 -c 10 -r 1000 -d 32" 50000
measure "redis GET P16" "redis-benchmark -p $tr -t get -n 200000 -c 10 -P 16 -r 1000 -d 32" 200000
measure "memcached get/set 90/10" "memcaslap -s 127.0.0.1:$tm -T 1 -c 10 -x 50000 -w 1k" 50000
measure "memcached get/set 90/10 (4x requests)" "memcaslap -s 127.0.0.1:$tm -T 1 -c 10 -x 200000 -w 1k" 200000
# Split over two servers: parts, merges and the slot's key buffers.
redis-benchmark -p $tr2 -t set -n 20000 -r 1000 -d 32 >/dev/null 2>&1
measure "redis MGET 4 keys P16, 2 servers" "redis-benchmark -p $tr2 -n 100000 -c 10 -P 16 -r 1000 mget key:__rand_int__ key:__rand_int__ key:__rand_int__ key:__rand_int__" 100000
measure "memcached 4-key get 16 deep, 2 servers" "python3 bench/multiget.py $tm2 50000" 50000
