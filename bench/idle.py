#!/usr/bin/env python3
"""Idle client connections: RSS per connection of a fresh Tern and a fresh nutcracker, measured
as bench.py measures it (the RSS rise while --count connections are opened and left idle), in
a process that has served no load yet. bench.py measures after its loads, when freed memory is
reused and the figure is lower; this one is the upper bound, repeatable run to run.

  python3 bench/idle.py [--count 10000] [--runs 3] [--tern PATH] [--redis] [--used | --named]

--used: each connection first sends one request (a GET of a missing key) and reads its reply,
as a client that has been used and then idles.
--named (with --redis): each Tern connection first sends what redis-py 5 sends as it connects,
CLIENT SETINFO LIB-NAME and LIB-VER, then a GET. nutcracker refuses CLIENT commands, so its
connections send the GET alone.
"""
import argparse, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, Processes, free_port, idle_connections, wait_port  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    parser.add_argument("--redis", action="store_true", help="a Redis pool instead of a memcached one")
    parser.add_argument("--used", action="store_true", help="one request per connection before it idles")
    parser.add_argument("--named", action="store_true", help="Redis: CLIENT SETINFO as redis-py sends it, then a GET")
    args = parser.parse_args()
    if args.named and not args.redis: parser.error("--named is for Redis (--redis)")
    results = {"nutcracker": [], "tern": []}
    for run in range(args.runs):
        procs = Processes()
        try:
            backend = free_port()
            if args.redis:
                procs.start(["redis-server", "--port", str(backend), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], "backend")
            else:
                procs.start(["memcached", "-p", str(backend), "-l", "127.0.0.1", "-U", "0"] + (["-u", "root"] if os.getuid() == 0 else []), "backend")
            wait_port(backend)
            for name in results:
                port = free_port()
                config = os.path.join(procs.dir, f"{name}.yml")
                with open(config, "w") as f:
                    f.write(f"p:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: 2000\n"
                            + ("  redis: true\n" if args.redis else "") + f"  servers:\n   - 127.0.0.1:{backend}:1\n")
                binary = "nutcracker" if name == "nutcracker" else args.tern
                process = procs.start([binary, "-c", config, "-s", str(free_port()), "-a", "127.0.0.1", "-v", "3"], f"{name}{run}")
                wait_port(port)
                if not args.used and not args.named:
                    request = reply = None
                elif args.redis:
                    request, reply = b"*2\r\n$3\r\nGET\r\n$12\r\nidle:missing\r\n", b"$-1\r\n"
                    if args.named and name == "tern":
                        request = (b"*4\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$8\r\nLIB-NAME\r\n$8\r\nredis-py\r\n"
                                   b"*4\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$7\r\nLIB-VER\r\n$5\r\n5.0.8\r\n" + request)
                        reply = b"+OK\r\n+OK\r\n" + reply
                else:
                    request, reply = b"get idle:missing\r\n", b"END\r\n"
                results[name].append(idle_connections(port, process.pid, args.count, request, reply))
        finally:
            procs.stop()
    kind = "Redis" if args.redis else "memcached"
    used = ", each used for one GET first" if args.used else ""
    if args.named: used = ", each sent CLIENT SETINFO LIB-NAME and LIB-VER (Tern only) and one GET first"
    print(f"idle {kind} client connections{used}, {args.count} per run, fresh processes, medians of {args.runs}")
    print("| target | bytes of RSS per connection | runs |")
    print("| --- | ---: | --- |")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
