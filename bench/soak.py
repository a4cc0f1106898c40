#!/usr/bin/env python3
"""Soak: mixed memcached + Redis load with connection churn through one Tern for a bounded time
(default 10 minutes), RSS printed every 10 s. Passes when RSS stays within 5 % of its value
after the warm-up minute. Loopback only.   python3 bench/soak.py [--minutes 10]"""
import argparse, os, signal, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Processes, free_port, wait_port, rss_kib, ROOT

parser = argparse.ArgumentParser()
parser.add_argument("--minutes", type=float, default=10)
parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
args = parser.parse_args()
procs = Processes()
try:
    mc, rd = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
    for p in mc: procs.start(["memcached", "-p", str(p), "-l", "127.0.0.1", "-U", "0", "-m", "64"] + (["-u", "root"] if os.getuid() == 0 else []), f"mc{p}")
    for p in rd: procs.start(["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], f"rd{p}")
    for p in mc + rd: wait_port(p)
    tm, tr = free_port(), free_port()
    conf = os.path.join(procs.dir, "soak.yml")
    open(conf, "w").write(
        f"m:\n  listen: 127.0.0.1:{tm}\n  strict_keys: false\n  timeout: 1000\n  servers:\n   - 127.0.0.1:{mc[0]}:1\n   - 127.0.0.1:{mc[1]}:1\n"
        f"r:\n  listen: 127.0.0.1:{tr}\n  redis: true\n  timeout: 1000\n  servers:\n   - 127.0.0.1:{rd[0]}:1\n   - 127.0.0.1:{rd[1]}:1\n")
    tern = procs.start([args.tern, "-c", conf, "-s", str(free_port()), "-v", "4"], "tern")
    wait_port(tm); wait_port(tr)
    end = time.time() + args.minutes * 60
    loads = []
    def spawn():
        loads.append(subprocess.Popen(["memcaslap", "-s", f"127.0.0.1:{tm}", "-T", "1", "-c", "20", "-t", "20s", "-w", "1k"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # -k 0: a new connection per request (churn).
        loads.append(subprocess.Popen(["redis-benchmark", "-p", str(tr), "-t", "set,get,mset", "-n", "20000", "-c", "20", "-k", "0", "-r", "100000", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        loads.append(subprocess.Popen(["redis-benchmark", "-p", str(tr), "-t", "get", "-n", "200000", "-c", "20", "-P", "16", "-r", "100000", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    samples = []
    start = time.time()
    next_sample = start
    while time.time() < end:
        loads = [p for p in loads if p.poll() is None]
        if len(loads) < 3: spawn()
        if time.time() >= next_sample:
            rss = rss_kib(tern.pid)
            samples.append((time.time() - start, rss))
            print(f"{time.time() - start:6.0f} s  RSS {rss} KiB", flush=True)
            next_sample += 10
        time.sleep(0.5)
    for p in loads: p.kill()
    baseline = [r for t, r in samples if t >= 60] or [samples[-1][1]]
    growth = (max(baseline) - baseline[0]) / baseline[0] * 100
    print(f"RSS after warm-up: start {baseline[0]} KiB, max {max(baseline)} KiB, growth {growth:.1f} %")
    sys.exit(0 if growth <= 5 else 1)
finally:
    procs.stop()
