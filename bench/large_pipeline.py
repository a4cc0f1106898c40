#!/usr/bin/env python3
"""Issue #24's memory case: a pipeline of five 16 MiB SETs in one write, then an MGET of them
over two redis-servers, through Tern; prints Tern's peak RSS (VmHWM) after the SETs and during
the MGET (reset before it). Needs redis-py.

  python3 bench/large_pipeline.py [--tern PATH] [--size MiB]
"""
import argparse, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, Processes, free_port, wait_port  # noqa: E402
import redis  # noqa: E402


def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    parser.add_argument("--size", type=int, default=16, help="MiB per value")
    args = parser.parse_args()
    procs = Processes()
    try:
        servers = [free_port(), free_port()]
        for n, port in enumerate(servers):
            procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], f"redis{n}")
            wait_port(port)
        port = free_port()
        config = os.path.join(procs.dir, "tern.yml")
        with open(config, "w") as f:
            f.write(f"r:\n  listen: 127.0.0.1:{port}\n  redis: true\n  timeout: 20000\n  client_output_limit: 1073741824\n  servers:\n"
                    + "".join(f"   - 127.0.0.1:{s}:1\n" for s in servers))
        tern = procs.start([args.tern, "-c", config, "--threads", "1", "--no-stats", "-v", "3"], "tern")
        wait_port(port)
        r = redis.Redis(port=port, socket_timeout=60)
        base = hwm(tern.pid)
        values = [os.urandom(args.size << 20) for _ in range(5)]
        pipe = r.pipeline(transaction=False)
        # Keys differing in their first bytes: k0..k4 can all land on one server (ketama), and
        # the MGET would then be forwarded whole rather than merged.
        keys = [f"{i}:big" for i in range(5)]
        for k, v in zip(keys, values): pipe.set(k, v)
        assert pipe.execute() == [True] * 5
        placed = [redis.Redis(port=s).dbsize() for s in servers]
        after_sets = hwm(tern.pid)
        with open(f"/proc/{tern.pid}/clear_refs", "w") as f: f.write("5")
        reset = hwm(tern.pid)
        assert r.mget(keys) == values
        print(f"{5 * args.size} MiB of values (keys per server {placed}): base {base} MiB; peak after the SET pipeline {after_sets} MiB; "
              f"MGET peak {hwm(tern.pid)} MiB (reset to {reset} MiB before it)")
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
