#!/usr/bin/env bash
# The demo: installs what is missing, builds Tern (release), starts on loopback two memcached
# (11311, 11312), two redis-server (6381, 6382) and an "old" memcached (11313) pre-filled with
# user:1..user:5, then runs Tern in the foreground on Config/tern.yml:
#   22121 memcached pool "cache", 22122 Redis pool "sessions", 22123 warm-up pool "warm"
#   (new: 11311 + 11312, old: 11313), stats port 22222, admin endpoint 9121.
# Ctrl-C (or SIGTERM) stops everything it started. Extra arguments go to tern.
#
# Environment:
#   TERN_BINARY=path          run this tern instead of building release (the tests use the debug build)
#   TERN_DEMO_SKIP_INSTALL=1  do not run Deploy/install-packages.sh
#   TERN_DEMO_PORT_OFFSET=N   add N to every port above (Config/tern.yml is rewritten into a
#                             temporary copy), so the demo can run beside another one; default 0
set -euo pipefail
if [ -n "${TERN_BINARY:-}" ] && [[ $TERN_BINARY != /* ]]; then TERN_BINARY=$PWD/$TERN_BINARY; fi
cd "$(dirname "$0")/.."

offset=${TERN_DEMO_PORT_OFFSET:-0}
[[ $offset =~ ^[0-9]+$ ]] || { echo "TERN_DEMO_PORT_OFFSET must be a number" >&2; exit 2; }
port() { echo $(($1 + offset)); }
cache=$(port 22121) sessions=$(port 22122) warm=$(port 22123)
memcached_ports=("$(port 11311)" "$(port 11312)")
old_port=$(port 11313)
redis_ports=("$(port 6381)" "$(port 6382)")
stats=$(port 22222) admin=$(port 9121)

if [ "${TERN_DEMO_SKIP_INSTALL:-}" != 1 ]; then Deploy/install-packages.sh; fi
if [ -n "${TERN_BINARY:-}" ]; then
    tern=$TERN_BINARY
else
    swift build -c release
    tern=.build/release/tern
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tern-demo.XXXXXX")
pids=()
stopped=0
cleanup() {
    [ "$stopped" = 1 ] && return
    stopped=1
    trap '' INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'cleanup; echo "demo stopped"; exit 0' INT TERM

# Waits until something accepts on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1; logs in $work" >&2
    return 1
}

user_flag=()
[ "$(id -u)" -eq 0 ] && user_flag=(-u root)
for p in "${memcached_ports[@]}" "$old_port"; do
    memcached -l 127.0.0.1 -p "$p" -U 0 -t 1 "${user_flag[@]}" >"$work/memcached-$p.log" 2>&1 &
    pids+=($!)
done
for p in "${redis_ports[@]}"; do
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis-$p.log" 2>&1 &
    pids+=($!)
done
for p in "${memcached_ports[@]}" "$old_port" "${redis_ports[@]}"; do wait_port "$p"; done

# The old pool is full: user:1..user:5 with flags 42 and a one-hour TTL.
exec 3<>"/dev/tcp/127.0.0.1/$old_port"
names=(alice bob carol dave erin)
for i in 1 2 3 4 5; do
    printf 'set user:%d 42 3600 %d\r\n%s\r\n' "$i" "${#names[i-1]}" "${names[i-1]}" >&3
done
for i in 1 2 3 4 5; do
    IFS= read -r -t 5 reply <&3
    [ "${reply%$'\r'}" = STORED ] || { echo "pre-filling the old memcached failed: $reply" >&2; exit 1; }
done
exec 3>&-

config=Config/tern.yml
if [ "$offset" != 0 ]; then
    config=$work/tern.yml
    perl -pe 's/127\.0\.0\.1:(\d+)/"127.0.0.1:" . ($1 + '"$offset"')/ge' Config/tern.yml >"$config"
fi

"$tern" -c "$config" -s "$stats" -a 127.0.0.1 --admin-port "$admin" "$@" &
tern_pid=$!
pids+=("$tern_pid")
for p in "$cache" "$sessions" "$warm" "$admin"; do wait_port "$p"; done

cat <<EOF

Tern is running ($config). In another terminal:

  # Redis pool "sessions" (redis-server ${redis_ports[0]}, ${redis_ports[1]}; the {tag} keeps keys together)
  redis-cli -p $sessions set '{user:1}:name' alice
  redis-cli -p $sessions get '{user:1}:name'

  # memcached pool "cache" (memcached ${memcached_ports[0]}, ${memcached_ports[1]}, ketama)
  printf 'set greeting 0 0 5\\r\\nhello\\r\\nget greeting\\r\\n' | nc -q1 127.0.0.1 $cache

  # warm-up pool "warm": user:1..user:5 are only in the old memcached ($old_port); the first
  # get is answered from it and copied into the new servers
  printf 'get user:1\\r\\n' | nc -q1 127.0.0.1 $warm
  printf 'stats\\r\\n' | nc -q1 127.0.0.1 $warm | grep warmup_

  # what the Redis servers hold, summed over the pool (Redis's own INFO fields), and the
  # pool's slow log (requests slower than 10 ms: SLOWLOG GET lists them)
  redis-cli -p $sessions info keyspace
  redis-cli -p $sessions slowlog len

  # which server holds a key (from the config file, or the running Tern), and the hot keys
  $tern --locate '{user:1}:name' greeting user:1 -c $config
  curl -s '127.0.0.1:$admin/locate?pool=sessions&key=%7Buser:1%7D:name'
  curl -s 127.0.0.1:$admin/hotkeys

  # nutcracker's stats JSON, and Prometheus metrics (all of them: grep tern_)
  nc 127.0.0.1 $stats
  curl -s 127.0.0.1:$admin/metrics | grep '^tern_warmup'

Ctrl-C stops Tern and the five servers.
EOF

# Tern runs in the background so that a SIGTERM to this script runs the trap at once (bash
# defers traps while a foreground child runs); wait returns when Tern exits or a signal comes.
status=0
wait "$tern_pid" || status=$?
echo "tern exited with status $status" >&2
exit "$status"
