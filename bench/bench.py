#!/usr/bin/env python3
"""Side-by-side benchmark: direct backend vs nutcracker vs Tern, in one run on loopback.

Starts 2 memcached and 2 redis-server (no persistence) plus, for the warm-up workloads, an old
pool of each; runs the same loads against every target with real tools (memaslap as
`memcaslap`, redis-benchmark) and prints ops/s, p50/p99 latency and the proxy's CPU
microseconds per request (user+sys from /proc/PID/stat before and after, divided by requests).
Medians of --runs runs. Loopback only; every load is bounded in time or count.
"""
import argparse, csv, io, json, math, os, random, re, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")

_handed_out = set()

def free_port():
    """A port nothing is bound to, below the kernel's ephemeral range (a port from bind(0) could be
    taken by an outgoing connection of an earlier load before a server binds it), never the same
    port twice in one run."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f: start = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        start = 32768
    upper = min(start, 32768) if start > 11000 else 32768
    while True:
        port = random.randrange(10000, upper)
        if port in _handed_out: continue
        _handed_out.add(port)
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port)); return port
        except OSError:
            pass
        finally:
            s.close()

def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"): return int(line.split()[1])
    return 0

class Processes:
    def __init__(self): self.list = []; self.dir = tempfile.mkdtemp(prefix="tern-bench-")
    def start(self, args, name):
        log = open(os.path.join(self.dir, name + ".log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=log, preexec_fn=os.setsid)
        self.list.append(p); return p
    def stop(self):
        for p in self.list:
            try: os.killpg(p.pid, signal.SIGKILL)
            except OSError: pass
        for p in self.list: p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

def memaslap(servers, seconds, division=1, replicate=0, binary=False):
    args = ["memcaslap", "-s", ",".join(servers), "-T", "2", "-c", "50", "-t", f"{seconds}s", "-w", "1k", "-S", f"{seconds}s"]
    if division > 1: args += ["-d", str(division)]
    if binary: args += ["-B"]
    if replicate: args += ["-p", str(replicate)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout
    ops = int(re.search(r"Run time: [\d.]+s Ops: (\d+)", out).group(1))
    tps = float(re.search(r"TPS: (\d+)", out).group(1))
    # Log2 latency distribution of all events: rows "k: c0 c1 c2 c3" count [2^(k+i), 2^(k+i+1)) µs.
    total = out.split("Total Statistics")[-1]
    buckets = []
    for row in re.findall(r"^\s+(\d+):\s+([\d\s]+)$", total, re.M):
        base = int(row[0])
        for i, count in enumerate(row[1].split()):
            buckets.append((2 ** (base + i + 1), int(count)))
    def percentile(p):
        n = sum(c for _, c in buckets); seen = 0
        for upper, c in buckets:
            seen += c
            if seen >= p * n: return upper / 1000.0
        return float("nan")
    return {"ops": ops, "rps": tps, "p50": percentile(0.5), "p99": percentile(0.99), "approx": True}

def redis_benchmark(port, test, pipeline, requests):
    args = ["redis-benchmark", "-p", str(port), "-t", test, "-c", "50", "-P", str(pipeline), "-r", "100000", "-d", "32", "-n", str(requests), "--csv"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600).stdout
    rows = [r for r in csv.reader(io.StringIO(out)) if r and r[0] != "test"]
    row = rows[0]
    return {"ops": requests, "rps": float(row[1]), "p50": float(row[4]), "p99": float(row[6]), "approx": False}

def tern_pool_stats(stats_port, pool):
    with socket.create_connection(("127.0.0.1", stats_port), timeout=5) as s:
        data = b""
        while chunk := s.recv(65536): data += chunk
    return json.loads(data)[pool]

WARMUP_COUNTERS = ("warmup_new_hits", "warmup_old_hits", "warmup_misses", "warmup_copies")

def requests_served(pool):
    """Reads a warm-up pool answered (from either pool, or misses); for another pool, requests
    sent to its servers (one per request for memaslap's single-key loads)."""
    if "warmup_new_hits" in pool:
        return pool["warmup_new_hits"] + pool["warmup_old_hits"] + pool["warmup_misses"]
    return sum(server["requests"] for server in pool.values() if isinstance(server, dict))

def tern_load(stats_port, pool, run, shared=False):
    """Runs a load against one Tern pool, adding a warm-up pool's counter increments to its result.
    With shared, the load also sends requests elsewhere: its requests are then those this pool
    served, and it has no latency (the load tool's figures mix both targets)."""
    before = tern_pool_stats(stats_port, pool)
    result = run()
    after = tern_pool_stats(stats_port, pool)
    if shared:
        served = requests_served(after) - requests_served(before)
        seconds = result["ops"] / result["rps"]  # the load tool's own run time, without its start-up
        result = {"ops": served, "rps": served / seconds, "p50": float("nan"), "p99": float("nan"), "approx": False}
    if "warmup_new_hits" in after:
        result["warmup"] = {name: after[name] - before[name] for name in WARMUP_COUNTERS}
    return result

def measure(pids, run):
    """Runs a load; with pids, adds their CPU (user+sys) per request as cpu_us."""
    before = sum(cpu_seconds(pid) for pid in pids)
    result = run()
    if pids: result["cpu_us"] = (sum(cpu_seconds(pid) for pid in pids) - before) * 1e6 / max(1, result["ops"])
    return result

def idle_connections(port, pid, count, request=None, reply=None):
    """RSS rise per connection while `count` connections are open and idle. With `request`,
    each connection first sends it and reads `reply` (a client that has been used, then idles)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 1000)), hard))
    time.sleep(0.5)
    before = rss_kib(pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port)); socks.append(s)
        if request:
            s.sendall(request)
            got = b""
            while len(got) < len(reply): got += s.recv(len(reply) - len(got))
            assert got == reply, got
    time.sleep(2)
    after = rss_kib(pid)
    for s in socks: s.close()
    return (after - before) * 1024.0 / count

def pool_yaml(name, listen, servers, redis=False, strict_keys=True, warmup=None):
    """One pool of a nutcracker.yml (Tern reads the same file); strict_keys and warmup are Tern's."""
    lines = [f"{name}:", f"  listen: 127.0.0.1:{listen}", "  hash: fnv1a_64", "  distribution: ketama", "  timeout: 2000"]
    if redis: lines.append("  redis: true")
    if not strict_keys: lines.append("  strict_keys: false")
    lines += ["  servers:"] + [f"   - {server}" for server in servers]
    if warmup: lines += ["  warmup:", "    servers:"] + [f"     - {server}" for server in warmup]
    return "\n".join(lines) + "\n"

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated workload names")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    procs = Processes()
    try:
        mc = [free_port() for _ in range(4)]
        # rd[0..1]: the pool; rd[2..3]: the warm-up's old pool; rd[4..5]: the warm-up's new pool.
        rd = [free_port() for _ in range(6)]
        backend = {}  # port → process, for the direct rows' server CPU
        for port in mc: backend[port] = procs.start(["memcached", "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-t", "1", "-m", "256", "-c", "20000"] + (["-u", "root"] if os.getuid() == 0 else []), f"mc{port}")
        for port in rd: backend[port] = procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxclients", "20000"], f"rd{port}")
        for port in mc + rd: wait_port(port)
        nc_mc, nc_rd, nc_mc_old, tern_mc, tern_rd, tern_mc_warm, tern_rd_warm, tern_mc_old = (free_port() for _ in range(8))
        servers = lambda ports: [f"127.0.0.1:{port}:1" for port in ports]
        nc_conf = os.path.join(procs.dir, "nutcracker.yml")
        with open(nc_conf, "w") as f:
            f.write(pool_yaml("mc", nc_mc, servers(mc[:2])))
            f.write(pool_yaml("rd", nc_rd, servers(rd[:2]), redis=True))
            # Writers not yet moved to Tern: the memcached warm-up load sets its keys through this
            # pool into the old servers, placed as Tern's warm-up pool places them there.
            f.write(pool_yaml("oldmc", nc_mc_old, servers(mc[2:4])))
        tern_conf = os.path.join(procs.dir, "tern.yml")
        with open(tern_conf, "w") as f:
            # memaslap's keys start with control bytes (0x10): memcached and nutcracker accept
            # them, Tern refuses them unless a pool says strict_keys: false.
            f.write(pool_yaml("mc", tern_mc, servers(mc[:2]), strict_keys=False))
            f.write(pool_yaml("rd", tern_rd, servers(rd[:2]), redis=True))
            # Warm-up pools: memcached's new pool is the pool's two servers and its old pool two
            # more; Redis's new and old pools are two servers each of their own.
            f.write(pool_yaml("warmmc", tern_mc_warm, servers(mc[:2]), strict_keys=False, warmup=servers(mc[2:4])))
            f.write(pool_yaml("warmrd", tern_rd_warm, servers(rd[4:6]), redis=True, warmup=servers(rd[2:4])))
            f.write(pool_yaml("oldmc", tern_mc_old, servers(mc[2:4]), strict_keys=False))
        nutcracker = procs.start(["nutcracker", "-c", nc_conf, "-s", str(free_port()), "-a", "127.0.0.1", "-v", "3"], "nutcracker")
        tern_stats = free_port()
        tern = procs.start([args.tern, "-c", tern_conf, "-s", str(tern_stats), "-a", "127.0.0.1", "-v", "3"], "tern")
        for port in (nc_mc, nc_rd, nc_mc_old, tern_mc, tern_rd, tern_mc_warm, tern_rd_warm, tern_mc_old): wait_port(port)

        mc_direct = [f"127.0.0.1:{mc[0]}", f"127.0.0.1:{mc[1]}"]
        # Direct rows report the CPU of the servers that answered (memaslap spreads its keys over
        # both memcached; redis-benchmark talks to one redis-server): a server reads each request
        # and writes each reply with nothing behind it, as a proxy does on its client side.
        targets = {"nutcracker": [nutcracker.pid], "tern": [tern.pid], "tern, no warm-up": [tern.pid]}
        direct_servers = {"memcached": [backend[mc[0]].pid, backend[mc[1]].pid], "redis": [backend[rd[0]].pid]}
        s = args.seconds
        workloads = [
            ("memcached get/set 90/10, 50 conns", {"direct": lambda: memaslap(mc_direct, s), "nutcracker": lambda: memaslap([f"127.0.0.1:{nc_mc}"], s), "tern": lambda: memaslap([f"127.0.0.1:{tern_mc}"], s)}),
            ("memcached 10-key multi-get", {"direct": lambda: memaslap(mc_direct, s, 10), "nutcracker": lambda: memaslap([f"127.0.0.1:{nc_mc}"], s, 10), "tern": lambda: memaslap([f"127.0.0.1:{tern_mc}"], s, 10)}),
            # The binary protocol (memaslap -B): nutcracker has none; compare Tern's CPU per
            # request with its text row above.
            ("memcached get/set 90/10, binary protocol", {"direct": lambda: memaslap(mc_direct, s, binary=True), "tern": lambda: memaslap([f"127.0.0.1:{tern_mc}"], s, binary=True)}),
        ]
        for test, pipeline, count in (("set", 1, 150000), ("get", 1, 150000), ("set", 16, 1500000), ("get", 16, 1500000)):
            workloads.append((f"redis {test.upper()} P{pipeline}", {t: (lambda port=port, test=test, pipeline=pipeline, count=count: redis_benchmark(port, test, pipeline, count))
                                                                   for t, port in (("direct", rd[0]), ("nutcracker", nc_rd), ("tern", tern_rd))}))
        workloads.append(("redis MSET (10 keys)", {t: (lambda port=port: redis_benchmark(port, "mset", 1, 100000)) for t, port in (("direct", rd[0]), ("nutcracker", nc_rd), ("tern", tern_rd))}))
        # memaslap picks new random keys in every run, so no old pool can be seeded with them. In its
        # replication mode (-p 1) it sets every key on its first server only and reads keys from
        # both: the first server is nutcracker over the old pool (writers not yet moved), the
        # second Tern's warm-up pool, whose first read of each key misses the new pool, falls back
        # to the old one and copies it in. Tern's figures count only the reads it served.
        # The same load against a Tern pool over the old servers with no warm-up is the baseline:
        # half of each memaslap connection's requests go to nutcracker, so Tern sees a lighter
        # load than in the rows above and batches less.
        writers = f"127.0.0.1:{nc_mc_old}"
        workloads.append(("memcached warm-up get/set 90/10", {
            "tern": lambda: tern_load(tern_stats, "warmmc", lambda: memaslap([writers, f"127.0.0.1:{tern_mc_warm}"], s, replicate=1), shared=True),
            "tern, no warm-up": lambda: tern_load(tern_stats, "oldmc", lambda: memaslap([writers, f"127.0.0.1:{tern_mc_old}"], s, replicate=1), shared=True)}))
        workloads.append(("redis warm-up GET P1", {"tern": lambda: tern_load(tern_stats, "warmrd", lambda: redis_benchmark(tern_rd_warm, "get", 1, 150000))}))
        if args.only:
            wanted = args.only.split(",")
            workloads = [w for w in workloads if any(x in w[0] for x in wanted)]

        # Redis: the old pool holds keys 0..49,999 of the 100,000 the GET workload reads; the new
        # pool starts empty, so the first reads of those keys are old hits, copied in.
        for port in (rd[2], rd[3]):
            subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", "250000", "-P", "16", "-r", "50000", "-d", "32", "-q"], capture_output=True, timeout=300)

        results = {}
        for run in range(args.runs):
            for name, runners in workloads:
                for target, runner in runners.items():
                    r = measure(direct_servers[name.split()[0]] if target == "direct" else targets[target], runner)
                    results.setdefault((name, target), []).append(r)
                    print(f"run {run + 1} {name:36} {target:10} {r['rps']:>10.0f} ops/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  cpu/req {r.get('cpu_us', float('nan')):.2f} us", flush=True)
        idle = {}
        if args.idle:
            for target, pid, port in (("nutcracker", nutcracker.pid, nc_mc), ("tern", tern.pid, tern_mc)):
                idle[target] = idle_connections(port, pid, args.idle)
        def med(values): return statistics.median(values) if values else float("nan")
        table = ["| workload | target | ops/s | p50 ms | p99 ms | proxy CPU µs/req | vs nutcracker CPU | vs nutcracker ops/s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, runners in workloads:
            base = results.get((name, "nutcracker"))
            for target in runners:
                rs = results[(name, target)]
                rps = med([r["rps"] for r in rs]); p50 = med([r["p50"] for r in rs]); p99 = med([r["p99"] for r in rs])
                cpu = med([r["cpu_us"] for r in rs]) if "cpu_us" in rs[0] else None
                approx = "≤" if rs[0]["approx"] else ""
                cpu_ratio = f"{cpu / med([r['cpu_us'] for r in base]):.2f}×" if base and cpu is not None and target != "nutcracker" else ""
                rps_ratio = f"{rps / med([r['rps'] for r in base]):.2f}×" if base and target != "nutcracker" else ""
                shown = "" if cpu is None else (f"server {cpu:.2f}" if target == "direct" else f"{cpu:.2f}")
                latency = lambda ms: "—" if math.isnan(ms) else f"{approx}{ms:.3f}"  # NaN: not Tern's latency alone
                table.append(f"| {name} | {target} | {rps:,.0f} | {latency(p50)} | {latency(p99)} | {shown} | {cpu_ratio} | {rps_ratio} |")
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        report = "\n".join(table)
        report += ("\n\nIn the direct rows the CPU column is the answering servers' own CPU per request (\"server\"): "
                   "they read every request and write every reply with no backend behind them. Unpipelined that is "
                   "mostly system calls, the same reads and writes a proxy makes on its client side; pipelined, "
                   "the servers' own command work weighs more.\n")
        if idle:
            report += "\n| idle client connection | RSS per connection |\n| --- | ---: |\n" + "".join(f"| {t} | {v:.0f} bytes |\n" for t, v in idle.items())
        warmups = [(name, results[(name, "tern")]) for name, _ in workloads if "warmup" in results[(name, "tern")][0]]
        if warmups:
            # Totals over the runs: the first run of a load copies most of what later runs find.
            report += (f"\nWarm-up pools, totals over the {args.runs} run{'s' if args.runs > 1 else ''}:\n\n"
                       "| warm-up workload | reads served | new-pool hits | old-pool hits | misses | copies | copies/s |\n"
                       "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
            for name, rs in warmups:
                total = lambda key: sum(r["warmup"][key] for r in rs)
                seconds = sum(r["ops"] / r["rps"] for r in rs)
                report += (f"| {name} | {sum(r['ops'] for r in rs):,} | {total('warmup_new_hits'):,} | {total('warmup_old_hits'):,} | "
                           f"{total('warmup_misses'):,} | {total('warmup_copies'):,} | {total('warmup_copies') / seconds:,.0f} |\n")
        header = f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, {os.cpu_count()} cores, medians of {args.runs} runs, {s} s per memaslap run.\n"
        print("\n" + header + "\n" + report)
        if args.write:
            path = os.path.join(ROOT, "bench", "RESULTS.md")
            existing = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
            marker = "<!-- latest -->"
            section = f"{marker}\n## {datetime.datetime.utcnow():%Y-%m-%d} — commit {commit}\n\n{header}\n{report}\n"
            if marker in existing:
                before, _, rest = existing.partition(marker)
                after = rest.split("\n## ", 2)
                existing = before + section + ("\n## " + after[2] if len(after) > 2 else "")
            else:
                existing += "\n" + section
            open(path, "w").write(existing)
    finally:
        # Elastic workers: whether a second worker took clients during the loads, and why not.
        try:
            scaling = [line.rstrip() for line in open(os.path.join(procs.dir, "tern.log")) if "takes new clients" in line or "takes no new clients" in line]
            print("tern worker scaling:", *(scaling or ["no worker activated; none held"]), sep="\n  ")
        except OSError:
            pass
        procs.stop()

if __name__ == "__main__":
    main()
