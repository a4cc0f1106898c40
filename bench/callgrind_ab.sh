#!/usr/bin/env bash
# Instructions executed by Tern's worker thread for a fixed load, under callgrind, for A/B of
# two builds (wall-clock CPU on this 2-core VM moves by ±10 %; instruction counts do not).
#   bench/callgrind_ab.sh <tern binary> <label> <redis|redisp1|mset|getp16|setp16|mcsingle|mget>
# (PER_INSTRUCTION=1 records counts per instruction address, for callgrind_annotate --auto=no
# with objdump of the same binary), then compare the `summary:` line of $dir/cg-<label>-<load>.out-02 (thread 2 is the worker).
# A stripped copy of the binary runs with --threads 1 and the slow log off; backend ports are
# fixed so that keys land on the same servers in both runs.
set -euo pipefail
bin=$1; label=$2; load=$3; dir=${CALLGRIND_DIR:-/tmp/tern-callgrind}; label=$label-$load
mkdir -p "$dir"

cp "$bin" $dir/tern-$label && strip --strip-debug $dir/tern-$label
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
m1=21311; m2=21312; r1=26391; r2=26392; tm=22191; tr=22192
memcached -p $m1 -l 127.0.0.1 -U 0 -u root & p1=$!
memcached -p $m2 -l 127.0.0.1 -U 0 -u root & p2=$!
redis-server --port $r1 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & p3=$!
redis-server --port $r2 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & p4=$!
cat > $dir/tern-$label.yml <<YML
m:
  listen: 127.0.0.1:$tm
  servers:
   - 127.0.0.1:$m1:1
   - 127.0.0.1:$m2:1
  strict_keys: false
  slowlog_log_slower_than: -1
r:
  listen: 127.0.0.1:$tr
  redis: true
  servers:
   - 127.0.0.1:$r1:1
   - 127.0.0.1:$r2:1
  slowlog_log_slower_than: -1
YML
sleep 0.5
valgrind --tool=callgrind --separate-threads=yes ${PER_INSTRUCTION:+--dump-instr=yes} --callgrind-out-file=$dir/cg-$label.out $dir/tern-$label -c $dir/tern-$label.yml --threads 1 --no-stats -v 3 > $dir/vg-$label.log 2>&1 & vg=$!
for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$tr) 2>/dev/null && break; sleep 0.2; done
sleep 1
if [ $load = getp16 ]; then
redis-benchmark -p $tr -t get -n 100000 -P 16 -r 1000 -d 32 -q >/dev/null
elif [ $load = setp16 ]; then
redis-benchmark -p $tr -t set -n 100000 -P 16 -r 1000 -d 32 -q >/dev/null
elif [ $load = redis ]; then
redis-benchmark -p $tr -t set -n 20000 -P 16 -r 1000 -d 32 -q >/dev/null
redis-benchmark -p $tr -t get -n 50000 -P 16 -r 1000 -d 32 -q >/dev/null
redis-benchmark -p $tr -n 30000 -P 16 -r 1000 -q mget key:__rand_int__ key:__rand_int__ key:__rand_int__ key:__rand_int__ >/dev/null
elif [ $load = mset ]; then
redis-benchmark -p $tr -t mset -n 20000 -c 10 -r 100000 -d 32 -q >/dev/null
elif [ $load = redisp1 ]; then
redis-benchmark -p $tr -t set,get -n 20000 -c 10 -r 1000 -d 32 -q >/dev/null
elif [ $load = mget ]; then
python3 "$(dirname "$0")/multiget.py" $tm 30000 >/dev/null
else
memcaslap -s 127.0.0.1:$tm -T 1 -c 10 -x 30000 -w 1k >/dev/null 2>&1
fi
kill -TERM $vg; wait $vg || true
kill $p1 $p2 $p3 $p4; wait $p1 $p2 $p3 $p4 2>/dev/null || true
grep -E "Collected|events" $dir/vg-$label.log | tail -2
grep -E '^summary:' $dir/cg-$label.out-02
