#!/usr/bin/env python3
"""What TLS costs through Tern: redis-benchmark GET with TLS to Tern (TLS on the client side,
plain to one redis-server) against the same redis-server's own TLS port, in one run, rounds
interleaved, medians of --runs.

  python3 bench/tls.py --runs 3 --requests 200000

For each load (GET at pipeline 1 and 16, 50 connections, 32-byte values, random keys) it
prints ops/s, Tern's CPU per request (user+sys from /proc/PID/stat, as bench.py measures proxy
CPU) and redis-server's CPU per request in both setups: directly, redis-server does the TLS
work itself; through Tern, Tern does it and redis-server serves plain TCP. The certificates
(RSA 2048, TLS 1.3 negotiated) are made with openssl in a temporary directory.
"""
import argparse, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, Processes, cpu_seconds, free_port, wait_port  # noqa: E402


def openssl(*arguments):
    subprocess.run(["openssl", *arguments], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    parser.add_argument("--threads", default="", help="Tern's --threads (default: Tern's default)")
    args = parser.parse_args()
    procs = Processes()
    directory = procs.dir
    counter = iter(range(1000))

    def start(command):
        return procs.start(command, str(next(counter)))

    try:
        ca, key, crt = (os.path.join(directory, name) for name in ("ca.crt", "server.key", "server.crt"))
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", os.path.join(directory, "ca.key"), "-out", ca, "-days", "2", "-subj", "/CN=bench CA")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", os.path.join(directory, "server.csr"), "-subj", "/CN=localhost")
        with open(os.path.join(directory, "san.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", os.path.join(directory, "server.csr"), "-CA", ca, "-CAkey", os.path.join(directory, "ca.key"),
                "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", os.path.join(directory, "san.ext"))
        plain, tls, tern_port = free_port(), free_port(), free_port()
        redis = start(["redis-server", "--port", str(plain), "--tls-port", str(tls), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--tls-cert-file", crt, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"])
        wait_port(plain)
        wait_port(tls)
        config = os.path.join(directory, "tern.yml")
        with open(config, "w") as f:
            f.write(f"r:\n  listen: 127.0.0.1:{tern_port}\n  redis: true\n  timeout: 2000\n"
                    f"  tls: {{cert: {crt}, key: {key}}}\n  servers:\n   - 127.0.0.1:{plain}:1\n")
        threads = ["--threads", args.threads] if args.threads else []
        tern = start([args.tern, "-c", config, "-s", str(free_port()), "-a", "127.0.0.1", "-v", "3"] + threads)
        wait_port(tern_port)
        subprocess.run(["redis-cli", "-p", str(plain), "set", "key:__rand_int__", "x" * 32], check=True, stdout=subprocess.DEVNULL)

        loads = [1, 16]
        targets = [("direct TLS", tls), ("tern TLS", tern_port)]
        results = {(load, name): [] for load in loads for name, _ in targets}
        for run in range(args.runs):
            for load in loads:
                for name, port in targets:
                    before_tern, before_redis = cpu_seconds(tern.pid), cpu_seconds(redis.pid)
                    out = subprocess.run(["redis-benchmark", "-p", str(port), "--tls", "--cacert", ca, "-t", "get", "-P", str(load), "-c", "50",
                                          "-n", str(args.requests), "-r", "100000", "-d", "32", "-q", "--csv"],
                                         capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"redis-benchmark against {name} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
                    out = out.stdout
                    tern_cpu = cpu_seconds(tern.pid) - before_tern
                    redis_cpu = cpu_seconds(redis.pid) - before_redis
                    ops = float([line for line in out.splitlines() if line.startswith('"GET"')][0].split(",")[1].strip('"'))
                    results[(load, name)].append((ops, tern_cpu / args.requests * 1e6, redis_cpu / args.requests * 1e6))
        print(f"redis-benchmark GET, 50 connections, {args.requests} requests, medians of {args.runs} interleaved runs")
        print("| load | target | ops/s | Tern CPU µs/req | redis-server CPU µs/req | total CPU µs/req |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for load in loads:
            for name, _ in targets:
                rows = results[(load, name)]
                ops = statistics.median(r[0] for r in rows)
                tern_us = statistics.median(r[1] for r in rows)
                redis_us = statistics.median(r[2] for r in rows)
                print(f"| GET P{load} | {name} | {ops:,.0f} | {tern_us:.2f} | {redis_us:.2f} | {tern_us + redis_us:.2f} |")
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
