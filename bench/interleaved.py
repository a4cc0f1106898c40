#!/usr/bin/env python3
"""Interleaved A/B runs: nutcracker and variants of Tern (other binaries, flags, wrappers) on
the same backends, each load run against every target in turn, medians of --runs.

Where bench.py answers "how does Tern compare", this answers "did this change help": targets
take turns within each round, so a noisy minute hurts all of them alike.

  python3 bench/interleaved.py --runs 5 \
      --variant "base=||/tmp/tern-before" --variant "new=||.build/release/tern" \
      --variant "one-thread=|--threads 1" --variant "nc-v5=|-v 5" \
      --load get:16:1000000 --load get:1:100000 --load mc:10:4

A variant is NAME=WRAPPER|EXTRA-ARGS[|BINARY]; names starting with "nc" run nutcracker. The
baseline "nc" (nutcracker -v 3, as bench.py runs it) is always there. A load is
TEST:PIPELINE:REQUESTS for redis-benchmark (50 connections, random keys, 32-byte values), or
mc:DIVISION:SECONDS for memaslap (DIVISION 1 is get/set 90/10, 10 is 10-key multi-get), or
mcb:DIVISION:SECONDS for the same in memcached's binary protocol (memaslap -B; nutcracker has none,
so those rows are not run against it and print no ratio).
Proxy CPU is user+sys from /proc/PID/stat per request, as in bench.py.
"""
import argparse, os, re, signal, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, cpu_seconds, free_port, wait_port  # noqa: E402  (helpers shared with bench.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--load", action="append", default=[])
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    args = parser.parse_args()
    variants = args.variant or ["tern=|"]
    loads = args.load or ["get:1:100000", "get:16:1000000"]
    directory = tempfile.mkdtemp(prefix="tern-interleaved-")
    processes = []

    def start(command):
        log = open(os.path.join(directory, f"{len(processes)}.log"), "w")
        process = subprocess.Popen(command, stdout=log, stderr=log, preexec_fn=os.setsid)
        processes.append(process)
        return process

    try:
        user = ["-u", "root"] if os.getuid() == 0 else []
        memcached = [free_port() for _ in range(2)]
        redis = [free_port() for _ in range(2)]
        for port in memcached:
            start(["memcached", "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-t", "1", "-m", "256", "-c", "20000"] + user)
        for port in redis:
            start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        for port in memcached + redis:
            wait_port(port)

        def config(memcached_port, redis_port, nutcracker):
            # memaslap's keys begin with 0x10 bytes: Tern needs strict_keys: false for them.
            strict = "" if nutcracker else "  strict_keys: false\n"
            return (f"mc:\n  listen: 127.0.0.1:{memcached_port}\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: 2000\n{strict}"
                    f"  servers:\n   - 127.0.0.1:{memcached[0]}:1\n   - 127.0.0.1:{memcached[1]}:1\n"
                    f"rd:\n  listen: 127.0.0.1:{redis_port}\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  timeout: 2000\n"
                    f"  servers:\n   - 127.0.0.1:{redis[0]}:1\n   - 127.0.0.1:{redis[1]}:1\n")

        targets = {}
        for number, variant in enumerate(["nc=|-v 3"] + variants):
            name, rest = variant.split("=", 1)
            parts = rest.split("|")
            wrapper, extra = parts[0].split(), parts[1].split() if len(parts) > 1 else []
            binary = "nutcracker" if name.startswith("nc") else (parts[2] if len(parts) > 2 and parts[2] else args.tern)
            memcached_port, redis_port = free_port(), free_port()
            path = os.path.join(directory, f"{number}.yml")
            with open(path, "w") as f:
                f.write(config(memcached_port, redis_port, name.startswith("nc")))
            extra = extra if "-v" in extra else extra + ["-v", "3"]
            process = start(wrapper + [binary, "-c", path, "-s", str(free_port())] + extra)
            targets[name] = (process, memcached_port, redis_port)
        for _, memcached_port, redis_port in targets.values():
            wait_port(memcached_port); wait_port(redis_port)
        subprocess.run(["redis-benchmark", "-p", str(redis[0]), "-t", "set", "-n", "100000", "-r", "100000", "-d", "32", "-P", "16", "-q"], capture_output=True, timeout=120)
        subprocess.run(["redis-benchmark", "-p", str(redis[1]), "-t", "set", "-n", "100000", "-r", "100000", "-d", "32", "-P", "16", "-q"], capture_output=True, timeout=120)

        results = {}
        for _ in range(args.runs):
            for load in loads:
                test, depth, amount = load.split(":")
                for name, (process, memcached_port, redis_port) in targets.items():
                    if test == "mcb" and name.startswith("nc"):
                        continue
                    before = cpu_seconds(process.pid)
                    if test in ("mc", "mcb"):
                        command = ["memcaslap", "-s", f"127.0.0.1:{memcached_port}", "-T", "2", "-c", "50", "-t", f"{amount}s", "-w", "1k", "-S", f"{amount}s"]
                        if depth != "1":
                            command += ["-d", depth]
                        if test == "mcb":
                            command += ["-B"]
                        out = subprocess.run(command, capture_output=True, text=True, timeout=int(amount) + 60).stdout
                        requests = int(re.search(r"Run time: [\d.]+s Ops: (\d+)", out).group(1))
                        rate = float(re.search(r"TPS: (\d+)", out).group(1))
                        p99 = float("nan")
                    else:
                        out = subprocess.run(["redis-benchmark", "-p", str(redis_port), "-t", test, "-c", "50", "-P", depth, "-r", "100000", "-d", "32", "-n", amount, "--csv"],
                                             capture_output=True, text=True, timeout=600).stdout.strip().splitlines()[-1]
                        fields = [x.strip('"') for x in out.split(",")]
                        requests, rate, p99 = int(amount), float(fields[1]), float(fields[6])
                    cpu = (cpu_seconds(process.pid) - before) * 1e6 / requests
                    results.setdefault((load, name), []).append((cpu, rate, p99))
        for load in loads:
            has_base = (load, "nc") in results
            base_cpu = statistics.median(r[0] for r in results[(load, "nc")]) if has_base else float("nan")
            base_rate = statistics.median(r[1] for r in results[(load, "nc")]) if has_base else float("nan")
            for name in targets:
                if (load, name) not in results:
                    continue
                rows = results[(load, name)]
                cpu = statistics.median(r[0] for r in rows)
                rate = statistics.median(r[1] for r in rows)
                p99 = statistics.median(r[2] for r in rows)
                print(f"{load:16} {name:12} cpu {cpu:6.2f} us/req ({cpu / base_cpu:4.2f}x)  {rate:9.0f} ops/s ({rate / base_rate:4.2f}x)"
                      f"  p99 {p99:.3f} ms  runs {[round(r[0], 1) for r in rows]}", flush=True)
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        for process in processes:
            process.wait()


if __name__ == "__main__":
    main()
