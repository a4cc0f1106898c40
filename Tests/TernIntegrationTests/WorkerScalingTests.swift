import Foundation
import XCTest

/// Elastic workers (no `--threads`): clients stay on one worker under light load, more workers
/// take clients once the active ones are busy, and `/metrics` shows each worker's figures.
final class WorkerScalingTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    func start(_ arguments: [String]) throws -> (port: Int, admin: Int) {
        let backend = try group.redis()
        let port = ProcessGroup.freePort(), admin = ProcessGroup.freePort()
        try group.tern(config: "r:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 3000\n  servers:\n   - \(backend.address):1\n",
                       arguments: arguments + ["--admin-port", "\(admin)"], waitPort: port)
        return (port, admin)
    }

    /// Python helpers: /metrics' per-worker families, and a raw RESP client that sends exactly
    /// the requests given (redis-py may send CLIENT SETINFO of its own).
    static func helpers(port: Int, admin: Int, workers: Int) -> String {
        """
        def metrics():
            text = urllib.request.urlopen("http://127.0.0.1:\(admin)/metrics", timeout=5).read().decode()
            found = {}
            for line in text.splitlines():
                if line.startswith(("tern_worker_", "tern_idle_cpus")):
                    name, value = line.rsplit(" ", 1)
                    found[name] = float(value)
            return found
        def per(found, family):
            return [found.get(family + '{worker="%d"}' % w) for w in range(\(workers))]
        def command(*args):
            return b"*%d\\r\\n" % len(args) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(a), a) for a in args)
        def pipelined_load(stop, errors, kept, size=200, pause=0):
            # One redis-py client's pipelines of GETs until `stop` is non-empty.
            try:
                r = redis.Redis(port=\(port))
                kept.append(r)
                r.set("hot", "x")
                while not stop:
                    p = r.pipeline(transaction=False)
                    for _ in range(size): p.get("hot")
                    assert all(v == b"x" for v in p.execute())
                    if pause: time.sleep(pause)
            except Exception as e:
                errors.append(e)
        class Raw:
            def __init__(self):
                self.s = socket.create_connection(("127.0.0.1", \(port)), timeout=5)
            def call(self, *args, expect):
                self.s.sendall(command(*args))
                got = b""
                while len(got) < len(expect):
                    chunk = self.s.recv(65536)
                    assert chunk, got
                    got += chunk
                assert got == expect, (args, got, expect)

        """
    }

    /// Light load with the defaults (three workers started here): twelve clients connected over
    /// three seconds, long enough for the once-a-second scaling to have acted, all stay on
    /// worker 0, the only one taking clients, which served all 24 requests.
    func testLightLoadStaysOnOneWorker() throws {
        let (port, admin) = try start(["--max-threads", "3"])
        try python(Self.helpers(port: port, admin: admin, workers: 3) + """
        began = time.time()
        clients = []
        for i in range(12):
            c = Raw()
            c.call(b"SET", b"light:%d" % i, b"value-%d" % i, expect=b"+OK\\r\\n")
            c.call(b"GET", b"light:%d" % i, expect=b"$%d\\r\\nvalue-%d\\r\\n" % (len(b"value-%d" % i), i))
            clients.append(c)
            time.sleep(0.25)
        time.sleep(max(0, 3.5 - (time.time() - began)))
        m = metrics()
        assert per(m, "tern_worker_clients") == [12, 0, 0], m
        assert per(m, "tern_worker_requests_total") == [24, 0, 0], m
        assert per(m, "tern_worker_active") == [1, 0, 0], m
        for u in per(m, "tern_worker_utilization"): assert u is not None and 0 <= u < 0.75, m
        """)
    }

    /// The many-cores path, forced with a low `--activate-above`: one client's pipelined load
    /// keeps worker 0 busier than 2 %, so worker 1 (and then 2) is activated; clients connected
    /// after that are served by other workers, which /metrics shows per worker: clients, and
    /// exactly two requests (SET, GET) per client on each worker other than 0.
    func testBusyWorkersActivateMoreAndClientsAreServedByThem() throws {
        let (port, admin) = try start(["--max-threads", "3", "--activate-above", "0.02", "--activate-idle", "0"])
        try python(Self.helpers(port: port, admin: admin, workers: 3) + """
        first = metrics()
        assert per(first, "tern_worker_active") == [1, 0, 0], first
        stop = []
        errors = []
        kept = []
        t = threading.Thread(target=pipelined_load, args=(stop, errors, kept), daemon=True)
        t.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = metrics()
            if per(m, "tern_worker_active")[1] == 1: break
            time.sleep(0.2)
        assert per(m, "tern_worker_active")[:2] == [1, 1], m
        assert per(m, "tern_worker_utilization")[0] >= 0.02, m
        clients = []
        for i in range(6):
            c = Raw()
            c.call(b"SET", b"busy:%d" % i, b"v%d" % i, expect=b"+OK\\r\\n")
            c.call(b"GET", b"busy:%d" % i, expect=b"$2\\r\\nv%d\\r\\n" % i)
            clients.append(c)
        stop.append(True)
        t.join()
        assert not errors, errors
        m = metrics()
        counts = [int(x) for x in per(m, "tern_worker_clients")]
        requests = [int(x) for x in per(m, "tern_worker_requests_total")]
        active = [int(x) for x in per(m, "tern_worker_active")]
        assert sum(counts) == 7, m
        # Worker 0 has the load's client; the others got new clients and served exactly theirs.
        assert counts[0] >= 1 and sum(counts[1:]) >= 3, m
        for w in (1, 2):
            assert requests[w] == 2 * counts[w], (w, m)
            if counts[w] > 0: assert active[w] == 1, m
        assert requests[0] > 2 * (counts[0] - 1) + 200, m
        print("worker clients", counts, "requests", requests, "active", active)
        """)
    }

    /// Busy workers on cores with no idle time left (a sidecar beside a busy application) take
    /// no help: one busy-looping process per CPU keeps the cores full while a client's load keeps
    /// worker 0 over the (low) threshold, and worker 1 stays inactive for six seconds, with
    /// `tern_idle_cpus` under the default 0.5, the held seconds counted and the log saying why.
    /// When the loops stop, the same load activates worker 1 within seconds.
    func testBusyWorkerOnSaturatedCoresStaysAlone() throws {
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        if cpus > 8 { throw XCTSkip("\(cpus) CPUs: the busy loops that fill them would be too many for a test") }
        let (port, admin) = try start(["--max-threads", "2", "--activate-above", "0.02"])
        try python(Self.helpers(port: port, admin: admin, workers: 2) + """
        import os, subprocess, sys
        stop, errors, kept = [], [], []
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)) + 1)]
        t = threading.Thread(target=pipelined_load, args=(stop, errors, kept, 100, 0.02), daemon=True)
        try:
            time.sleep(1.5)
            t.start()
            idle_seen = []
            for _ in range(30):
                time.sleep(0.2)
                m = metrics()
                assert per(m, "tern_worker_active") == [1, 0], m
                idle_seen.append(m.get("tern_idle_cpus"))
            assert all(v is not None for v in idle_seen), idle_seen
            assert min(idle_seen) < 0.5 and sorted(idle_seen)[len(idle_seen) // 2] < 0.5, idle_seen
            # Held, not idle: worker 0 was busy enough in two seconds in a row.
            assert m["tern_worker_activation_held_seconds_total"] >= 1, m
        finally:
            for p in spinners: p.kill()
            for p in spinners: p.wait()
        deadline = time.time() + 20
        while time.time() < deadline:
            m = metrics()
            if per(m, "tern_worker_active")[1] == 1: break
            time.sleep(0.2)
        stop.append(True)
        t.join()
        assert not errors, errors
        assert per(m, "tern_worker_active") == [1, 1], m
        assert m["tern_idle_cpus"] >= 0.5, m
        print("idle CPUs while saturated", idle_seen)
        """)
        let log = group.ternLog()
        XCTAssertTrue(log.contains("worker 1 takes no new clients yet: the active ones are busy"), log)
        XCTAssertTrue(log.contains("worker 1 now takes new clients (2 of 2 active"), log)
    }

    /// Long-lived connections opened before a second worker was active (a fleet reconnecting
    /// after a restart) spread once the first worker is busy: idle clients move to worker 1
    /// between two requests and keep their session (the names set with CLIENT SETNAME and
    /// SETINFO); a
    /// subscribed client never moves. Every moved client is then served by worker 1, exactly
    /// two requests each.
    func testBusyWorkerMovesIdleClientsToANewlyActiveOne() throws {
        let (port, admin) = try start(["--max-threads", "2", "--activate-above", "0.02", "--activate-idle", "0"])
        try python(Self.helpers(port: port, admin: admin, workers: 2) + """
        idle = []
        for i in range(10):
            c = Raw()
            c.call(b"CLIENT", b"SETNAME", b"idle-%d" % i, expect=b"+OK\\r\\n")
            if i % 2: c.call(b"CLIENT", b"SETINFO", b"LIB-VER", b"9.%d" % i, expect=b"+OK\\r\\n")
            idle.append(c)
        subscriber = Raw()
        subscriber.call(b"SUBSCRIBE", b"news", expect=b"*3\\r\\n$9\\r\\nsubscribe\\r\\n$4\\r\\nnews\\r\\n:1\\r\\n")
        m = metrics()
        assert per(m, "tern_worker_clients") == [11, 0] and per(m, "tern_worker_active") == [1, 0], m
        stop, errors, kept = [], [], []
        t = threading.Thread(target=pipelined_load, args=(stop, errors, kept), daemon=True)
        t.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = metrics()
            if per(m, "tern_worker_clients")[1] >= 5: break
            time.sleep(0.2)
        stop.append(True)
        t.join()
        assert not errors, errors
        m = metrics()
        counts = [int(x) for x in per(m, "tern_worker_clients")]
        assert counts[1] >= 5 and sum(counts) == 12, m
        assert per(m, "tern_worker_clients_moved_total")[0] >= 5, m
        before = [int(x) for x in per(m, "tern_worker_requests_total")]
        for i, c in enumerate(idle):
            c.call(b"CLIENT", b"GETNAME", expect=b"$%d\\r\\nidle-%d\\r\\n" % (len(b"idle-%d" % i), i))
            c.s.sendall(b"CLIENT INFO\\r\\n")
            info = b""
            while not info.endswith(b"\\n\\r\\n"): info += c.s.recv(4096)
            assert (b" lib-ver=9.%d\\n" % i if i % 2 else b" lib-ver=\\n") in info and b" name=idle-%d " % i in info, info
            c.call(b"SET", b"moved:%d" % i, b"v%d" % i, expect=b"+OK\\r\\n")
        m = metrics()
        after = [int(x) for x in per(m, "tern_worker_requests_total")]
        # Exactly the idle clients' 30 requests, at least 4 of the clients (12 requests) now on
        # worker 1 (the load's client, idle now, may have moved too; the subscriber never does).
        assert (after[0] - before[0]) + (after[1] - before[1]) == 30, (before, after, m)
        assert after[1] - before[1] >= 12 and (after[1] - before[1]) % 3 == 0, (before, after, m)
        # The subscriber still gets its messages on worker 0.
        publisher = Raw()
        publisher.call(b"PUBLISH", b"news", b"hello", expect=b":1\\r\\n")
        got = b""
        while not got.endswith(b"hello\\r\\n"): got += subscriber.s.recv(1024)
        assert got == b"*3\\r\\n$7\\r\\nmessage\\r\\n$4\\r\\nnews\\r\\n$5\\r\\nhello\\r\\n", got
        print("moved", counts)
        """)
    }

    /// memcached clients move too, text and binary (the protocol chosen by the first byte goes
    /// with them), and are answered correctly on their new worker.
    func testMemcachedIdleClientsMove() throws {
        let backend = try group.memcached()
        let port = ProcessGroup.freePort(), admin = ProcessGroup.freePort()
        try group.tern(config: "m:\n  listen: 127.0.0.1:\(port)\n  timeout: 3000\n  servers:\n   - \(backend.address):1\n",
                       arguments: ["--max-threads", "2", "--activate-above", "0.02", "--activate-idle", "0", "--admin-port", "\(admin)"], waitPort: port)
        try python(Self.helpers(port: port, admin: admin, workers: 2) + """
        import struct
        def binary_get(key):
            return struct.pack(">BBHBBHIIQ", 0x80, 0x00, len(key), 0, 0, 0, len(key), 7, 0) + key
        text, binary = [], []
        for i in range(6):
            c = Raw()
            c.s.sendall(b"set t%d 0 0 2\\r\\nv%d\\r\\n" % (i, i))
            assert c.s.recv(100) == b"STORED\\r\\n"
            text.append(c)
        for i in range(4):
            c = Raw()
            c.s.sendall(binary_get(b"t%d" % i))
            got = b""
            while len(got) < 24 + 4 + 2: got += c.s.recv(100)
            assert got[0] == 0x81 and got[-2:] == b"v%d" % i, got
            binary.append(c)
        stop, errors = [], []
        def load():
            try:
                s = socket.create_connection(("127.0.0.1", \(port)), timeout=5)
                while not stop:
                    s.sendall(b"get t0\\r\\n" * 200)
                    got = b""
                    while got.count(b"END\\r\\n") < 200: got += s.recv(65536)
                    assert got == b"VALUE t0 0 2\\r\\nv0\\r\\nEND\\r\\n" * 200
            except Exception as e:
                errors.append(e)
        t = threading.Thread(target=load, daemon=True)
        t.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = metrics()
            if per(m, "tern_worker_clients")[1] >= 4: break
            time.sleep(0.2)
        stop.append(True)
        t.join()
        assert not errors, errors
        m = metrics()
        assert per(m, "tern_worker_clients")[1] >= 4, m
        before = [int(x) for x in per(m, "tern_worker_requests_total")]
        for i, c in enumerate(text):
            c.s.sendall(b"get t%d\\r\\n" % i)
            got = b""
            while not got.endswith(b"END\\r\\n"): got += c.s.recv(100)
            assert got == b"VALUE t%d 0 2\\r\\nv%d\\r\\nEND\\r\\n" % (i, i), got
        for i, c in enumerate(binary):
            c.s.sendall(binary_get(b"t%d" % i))
            got = b""
            while len(got) < 24 + 4 + 2: got += c.s.recv(100)
            assert got[0] == 0x81 and got[6:8] == b"\\x00\\x00" and got[-2:] == b"v%d" % i, got
        m = metrics()
        after = [int(x) for x in per(m, "tern_worker_requests_total")]
        assert (after[0] - before[0]) + (after[1] - before[1]) == 10, (before, after, m)
        assert after[1] - before[1] >= 3, (before, after, m)
        """)
    }

    /// An explicit `--threads 3` keeps the old behaviour: all three take clients from the start,
    /// six clients connected one after another are spread two per worker.
    func testExplicitThreadsAllTakeClients() throws {
        let (port, admin) = try start(["--threads", "3"])
        try python(Self.helpers(port: port, admin: admin, workers: 3) + """
        clients = []
        for i in range(6):
            c = Raw()
            c.call(b"SET", b"fixed:%d" % i, b"v%d" % i, expect=b"+OK\\r\\n")
            c.call(b"GET", b"fixed:%d" % i, expect=b"$2\\r\\nv%d\\r\\n" % i)
            clients.append(c)
        m = metrics()
        assert per(m, "tern_worker_active") == [1, 1, 1], m
        assert per(m, "tern_worker_clients") == [2, 2, 2], m
        assert per(m, "tern_worker_requests_total") == [4, 4, 4], m
        """)
    }
}
