#!/usr/bin/env bash
# Builds Tern, starts two memcached on loopback (11311, 11312) and runs Tern in the foreground
# on Config/tern.yml (listening on 127.0.0.1:22121). Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
Deploy/install-packages.sh
swift build -c release
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
user_flag=()
[ "$(id -u)" -eq 0 ] && user_flag=(-u root)
for port in 11311 11312; do
    memcached -l 127.0.0.1 -p "$port" -U 0 "${user_flag[@]}" &
    pids+=($!)
done
echo "memcached on 127.0.0.1:11311 and 127.0.0.1:11312; tern on 127.0.0.1:22121"
echo "try: printf 'set hello 0 0 5\\r\\nworld\\r\\nget hello\\r\\n' | python3 -c 'import socket,sys; s=socket.create_connection((\"127.0.0.1\",22121)); s.sendall(sys.stdin.buffer.read()); import time; time.sleep(0.2); print(s.recv(4096).decode())'"
.build/release/tern -c Config/tern.yml "$@"
