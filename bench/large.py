#!/usr/bin/env python3
"""Large values: redis-benchmark SET and GET of 1 MiB values directly, through nutcracker and
through Tern, rounds interleaved, medians of --runs.

  python3 bench/large.py --runs 3 --requests 2000

Per row: ops/s, the proxy's CPU per MiB moved (user+sys from /proc/PID/stat), its minor page
faults per request (the same file) and its peak RSS (VmHWM, reset before each run through
/proc/PID/clear_refs). 10 connections, pipeline 1,
one redis-server behind both proxies (so nothing is split and each reply is single-part).
"""
import argparse, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, Processes, cpu_seconds, free_port, wait_port  # noqa: E402


def peak_kib(pid, field="VmHWM"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def minor_faults(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    args = parser.parse_args()
    procs = Processes()
    directory = procs.dir
    counter = iter(range(1000))

    def start(command):
        return procs.start(command, str(next(counter)))

    try:
        backend = free_port()
        start(["redis-server", "--port", str(backend), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_port(backend)
        nc_port, tern_port = free_port(), free_port()
        pool = "  redis: true\n  timeout: 5000\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n   - 127.0.0.1:%d:1\n" % backend
        with open(os.path.join(directory, "nc.yml"), "w") as f:
            f.write(f"r:\n  listen: 127.0.0.1:{nc_port}\n" + pool)
        with open(os.path.join(directory, "tern.yml"), "w") as f:
            f.write(f"r:\n  listen: 127.0.0.1:{tern_port}\n" + pool)
        nutcracker = start(["nutcracker", "-c", os.path.join(directory, "nc.yml"), "-s", str(free_port()), "-a", "127.0.0.1", "-v", "3"])
        tern = start([args.tern, "-c", os.path.join(directory, "tern.yml"), "-s", str(free_port()), "-a", "127.0.0.1", "-v", "3"])
        wait_port(nc_port)
        wait_port(tern_port)
        targets = [("direct", backend, None), ("nutcracker", nc_port, nutcracker), ("tern", tern_port, tern)]
        tests = ["set", "get"]
        results = {(test, name): [] for test in tests for name, _, _ in targets}
        mib = args.size / (1 << 20)
        for _ in range(args.runs):
            for test in tests:
                for name, port, process in targets:
                    if process:
                        reset_peak(process.pid)
                        start_kib = peak_kib(process.pid, "VmRSS")
                        before = cpu_seconds(process.pid)
                        faults_before = minor_faults(process.pid)
                    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", test, "-P", "1", "-c", "10", "-n", str(args.requests),
                                          "-d", str(args.size), "-r", "16", "-q", "--csv"], capture_output=True, text=True, check=True).stdout
                    line = [l for l in out.splitlines() if l.upper().startswith('"' + test.upper())][0]
                    ops = float(line.split(",")[1].strip('"'))
                    cpu = (cpu_seconds(process.pid) - before) / (args.requests * mib) * 1e6 if process else 0.0
                    faults = (minor_faults(process.pid) - faults_before) / args.requests if process else 0.0
                    peak = peak_kib(process.pid) / 1024 if process else 0.0
                    rise = peak - start_kib / 1024 if process else 0.0
                    results[(test, name)].append((ops, cpu, peak, rise, faults))
        print(f"redis-benchmark, {args.size}-byte values, 10 connections, pipeline 1, {args.requests} requests, medians of {args.runs} interleaved runs")
        # Peak RSS counts the program's own mapped files (Tern's binary and the Swift runtime are
        # about 24 MiB of it, nutcracker's a few); the rise over the RSS at the start of the run
        # is what the load itself costs.
        print("| test | target | ops/s | MiB/s | proxy CPU µs per MiB | page faults per request | proxy peak RSS MiB | peak rise during the run MiB |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for test in tests:
            for name, _, process in targets:
                rows = results[(test, name)]
                ops = statistics.median(r[0] for r in rows)
                cpu = statistics.median(r[1] for r in rows)
                peak = statistics.median(r[2] for r in rows)
                rise = statistics.median(r[3] for r in rows)
                faults = statistics.median(r[4] for r in rows)
                proxy = f"{cpu:,.0f} | {faults:,.1f} | {peak:,.1f} | {rise:,.1f}" if process else "— | — | — | —"
                print(f"| {test.upper()} | {name} | {ops:,.0f} | {ops * mib:,.0f} | {proxy} |")
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
