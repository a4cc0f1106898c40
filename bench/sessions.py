#!/usr/bin/env python3
"""Redis sessions through Tern against direct Redis, in one run (issue: Redis sessions).

    python3 bench/sessions.py [--tern .build/release/tern] [--seconds 5]

Rows, each measured directly against redis-server and through Tern (one worker, two backends,
the measured keys on one of them), same client code, same machine:
- pub/sub: one subscriber, one publisher pipelining PUBLISH 64 deep: messages received per second;
- BLPOP/RPUSH: a consumer blocked in BLPOP and a producer that RPUSHes the next item only when the
  consumer has taken the last one: round trips per second (each one a blocking command on a
  dedicated connection through Tern);
- MULTI/EXEC: INCR + GET transactions, one at a time: transactions per second;
- and, for reference, a plain GET one at a time (the same client pattern without a session).
Clients are raw sockets (no client library cost in the figures). The ratio column is Tern's
figure over direct Redis's.
"""
import argparse, os, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d never opened" % port)


def encode(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A target that does not answer (a Tern without sessions, say) ends the run, not hangs it.
        self.sock.settimeout(10)
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_until_count(self, marker, count):
        """Reads until `marker` has been seen `count` times; returns how many were seen."""
        seen = 0
        while seen < count:
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                raise SystemExit("no reply within 10 s")
            if not data:
                raise SystemExit("connection closed")
            self.buffer += data
            seen += self.buffer.count(marker)
            keep = len(marker) - 1
            self.buffer = self.buffer[-keep:] if keep else b""
        return seen


def pubsub_rate(port, seconds):
    sub = Conn(port)
    sub.send(encode("SUBSCRIBE", "bench:ch"))
    sub.read_until_count(b"subscribe", 1)
    pub = Conn(port)
    received = [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                received[0] += sub.read_until_count(b"message", 1)
            except (OSError, SystemExit):
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    batch = encode("PUBLISH", "bench:ch", "x" * 32) * 64
    start = time.time()
    while time.time() - start < seconds:
        pub.send(batch)
        pub.read_until_count(b":1\r\n", 64)
    elapsed = time.time() - start
    time.sleep(0.2)
    stop.set()
    return received[0] / elapsed


def blpop_rate(port, seconds):
    consumer, producer = Conn(port), Conn(port)
    count = 0
    start = time.time()
    while time.time() - start < seconds:
        consumer.send(encode("BLPOP", "bench:q", "5"))
        producer.send(encode("RPUSH", "bench:q", "item"))
        producer.read_until_count(b"\r\n", 1)
        consumer.read_until_count(b"item", 1)
        count += 1
    return count / (time.time() - start)


def transaction_rate(port, seconds):
    c = Conn(port)
    request = encode("MULTI") + encode("INCR", "bench:n") + encode("GET", "bench:n") + encode("EXEC")
    count = 0
    start = time.time()
    while time.time() - start < seconds:
        c.send(request)
        c.read_until_count(b"*2\r\n", 1)
        count += 1
    return count / (time.time() - start)


def get_rate(port, seconds):
    c = Conn(port)
    c.send(encode("SET", "bench:k", "v"))
    c.read_until_count(b"\r\n", 1)
    request = encode("GET", "bench:k")
    count = 0
    start = time.time()
    while time.time() - start < seconds:
        c.send(request)
        c.read_until_count(b"v\r\n", 1)
        count += 1
    return count / (time.time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tern", default=os.path.join(ROOT, ".build/release/tern"))
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tern-bench-sessions-")
    processes = []
    try:
        ports = [free_port() for _ in range(3)]
        for port in ports:
            processes.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                              stdout=subprocess.DEVNULL))
        for port in ports:
            wait_port(port)
        tern_port = free_port()
        config = os.path.join(work, "tern.yml")
        with open(config, "w") as f:
            f.write("s:\n  listen: 127.0.0.1:%d\n  redis: true\n  hash_tag: \"{}\"\n  timeout: 2000\n  servers:\n   - 127.0.0.1:%d:1\n   - 127.0.0.1:%d:1\n"
                    % (tern_port, ports[1], ports[2]))
        processes.append(subprocess.Popen([args.tern, "-c", config, "--threads", "1", "--no-stats"], stderr=subprocess.DEVNULL))
        wait_port(tern_port)
        rows = [("GET, one at a time (reference)", get_rate), ("pub/sub messages/s", pubsub_rate), ("BLPOP/RPUSH round trips/s", blpop_rate), ("MULTI/EXEC (INCR+GET) per s", transaction_rate)]
        print("| load | direct Redis | through Tern | Tern / direct |")
        print("| --- | ---: | ---: | ---: |")
        for name, measure in rows:
            direct = measure(ports[0], args.seconds)
            proxied = measure(tern_port, args.seconds)
            print("| %s | %.0f | %.0f | %.2f× |" % (name, direct, proxied, proxied / direct))
            sys.stdout.flush()
    finally:
        for process in processes:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
