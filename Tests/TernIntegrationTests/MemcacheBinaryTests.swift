import Foundation
import Synchronization
import XCTest
@testable import TernCore

/// The memcached binary protocol front: pylibmc `binary=True` and raw packets against real
/// memcached backends, each compared with what one memcached answers directly.
final class MemcacheBinaryTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    func start(_ backends: [Memcached], extra: String = "") throws -> (port: Int, pool: PoolConfig) {
        let port = ProcessGroup.freePort()
        let text = "b:\n  listen: 127.0.0.1:\(port)\n  timeout: 1000\n  max_item_size: 2097152\n\(extra)  servers:\n"
            + backends.map { "   - \($0.address):1\n" }.joined()
        try group.tern(config: text, arguments: ["--threads", "2"], waitPort: port)
        return (port, try ConfigLoader.load(text: text, file: "b.yml").pools[0])
    }

    /// Runs a script under Debian's interpreter (pylibmc lives there); it prints "ok" last.
    func pylibmc(_ script: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, text) = try ProcessGroup.run("/usr/bin/python3", ["-c", "import pylibmc, socket, struct, sys\n" + script + "\nprint('ok')"])
        XCTAssertEqual(status, 0, text, file: file, line: line)
        XCTAssertTrue(text.hasSuffix("ok\n"), text, file: file, line: line)
    }

    /// Every operation pylibmc offers, with binary=True, gives through Tern (two servers)
    /// exactly what it gives against one memcached: values, flags, misses, CAS, errors.
    func testPylibmcBinaryAnswersAsOneMemcached() throws {
        let backends = try [group.memcached(extra: ["-I", "2m"]), group.memcached(extra: ["-I", "2m"])]
        let reference = try group.memcached(extra: ["-I", "2m"])
        let tern = try start(backends)
        try pylibmc("""
        def run(port):
            c = pylibmc.Client(["127.0.0.1:%d" % port], binary=True, behaviors={"cas": True, "tcp_nodelay": True})
            out = []
            def do(name, f, *a):
                try: out.append((name, f(*a)))
                except Exception as e: out.append((name, type(e).__name__))
            do("set", c.set, "a", "hello"); do("get", c.get, "a"); do("miss", c.get, "missing")
            do("set_multi", c.set_multi, {"k%d" % i: "v%d" % i for i in range(50)})
            do("get_multi", lambda: sorted(c.get_multi(["k%d" % i for i in range(50)] + ["nope"]).items()))
            do("incr_missing", c.incr, "nokey")
            do("set_n", c.set, "n", 5); do("incr", c.incr, "n"); do("decr", c.decr, "n", 2); do("decr_floor", c.decr, "n", 100)
            do("incr_text", c.incr, "a")
            do("add_existing", c.add, "a", "x"); do("add_new", c.add, "newkey", "y")
            do("replace_missing", c.replace, "nokey", "z"); do("replace", c.replace, "a", "A"); do("get_replaced", c.get, "a")
            do("append", c.append, "a", "++"); do("prepend", c.prepend, "a", "--"); do("get_pended", c.get, "a")
            do("append_missing", c.append, "nokey", "x")
            value, cas = c.gets("a")
            do("cas", c.cas, "a", "viacas", cas); do("cas_stale", c.cas, "a", "stale", cas); do("get_cas", c.get, "a")
            do("delete", c.delete, "a"); do("delete_again", c.delete, "a")
            do("touch", c.touch, "newkey", 100); do("touch_missing", c.touch, "nokey", 100)
            do("one_mb", lambda: (c.set("big", "x" * (1 << 20)), len(c.get("big"))))
            do("too_big", c.set, "huge", "x" * (3 << 20))
            do("flags", lambda: (c.set("f", 123), c.get("f"), c.set("l", [1, 2]), c.get("l")))
            do("odd_key", lambda: (c.set("sp ace\\x01", "v"), c.get("sp ace\\x01")))
            do("flush", c.flush_all); do("after_flush", c.get, "newkey")
            return out
        direct, through = run(\(reference.port)), run(\(tern.port))
        diffs = [(d, t) for d, t in zip(direct, through) if d != t]
        assert not diffs and len(direct) == len(through), diffs
        assert dict(direct)["get_multi"][0] == ("k0", "v0") and dict(direct)["one_mb"] == (True, 1 << 20)
        """)
        // The keys went to both servers.
        for backend in backends {
            XCTAssertTrue(try TestClient(port: backend.port).request("stats\r\n", until: "END\r\n").contains("STAT cmd_set "))
        }
    }

    /// Keys with control bytes (memaslap's start with 0x10): with `strict_keys` off they travel
    /// as plain text tokens (the cheap path), with it on in base64; either way every answer is
    /// memcached's own and the item is stored under the packet's exact key.
    func testControlByteKeysAnswerAsMemcachedDoes() throws {
        for strict in [false, true] {
            let backend = try group.memcached()
            let reference = try group.memcached()
            let tern = try start([backend], extra: "  strict_keys: \(strict)\n")
            let keys = ["\u{10}\u{3}mem\u{7f}aslap", "tab\tkey", "\u{1}"]
            var batch: [UInt8] = []
            var opaque: UInt32 = 1
            for key in keys {
                batch += packet(0x01, key: key, extras: [0, 0, 0, 9, 0, 0, 0, 0], value: Array("v:\(key.utf8.count)".utf8), opaque: opaque); opaque += 1
                batch += packet(0x00, key: key, opaque: opaque); opaque += 1  // Get
                batch += packet(0x0c, key: key, opaque: opaque); opaque += 1  // GetK
                batch += packet(0x02, key: key, extras: [0, 0, 0, 0, 0, 0, 0, 0], value: Array("again".utf8), opaque: opaque); opaque += 1  // Add: exists
            }
            batch += packet(0x00, key: "\u{10}absent", opaque: 99)
            let direct = try exchange(reference.port, batch, expect: 13)
            let through = try exchange(tern.port, batch, expect: 13)
            XCTAssertEqual(direct.count, 13, direct.joined(separator: "\n"))
            XCTAssertEqual(through, direct, "strict_keys \(strict)")
            // Stored under the exact key: memcached's text protocol reads it back as it is.
            XCTAssertEqual(try backend.get("\u{10}\u{3}mem\u{7f}aslap"), "v:11", "strict_keys \(strict)")
        }
    }

    /// A packet as bytes.
    func packet(_ opcode: UInt8, key: String = "", extras: [UInt8] = [], value: [UInt8] = [], opaque: UInt32 = 0, cas: UInt64 = 0) -> [UInt8] {
        let keyBytes = Array(key.utf8)
        let body = extras.count + keyBytes.count + value.count
        var bytes: [UInt8] = [0x80, opcode, UInt8(keyBytes.count >> 8), UInt8(keyBytes.count & 0xff), UInt8(extras.count), 0, 0, 0]
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: body >> shift)) }
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: opaque >> UInt32(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: cas >> UInt64(shift))) }
        return bytes + extras + keyBytes + value
    }

    /// Response packets as (opcode, status, opaque, key, value) tuples, CAS left out.
    func responses(_ bytes: [UInt8]) -> [String] {
        var out: [String] = []
        var position = 0
        while position + 24 <= bytes.count {
            let keyLength = Int(bytes[position + 2]) << 8 | Int(bytes[position + 3])
            let extrasLength = Int(bytes[position + 4])
            let status = Int(bytes[position + 6]) << 8 | Int(bytes[position + 7])
            let body = bytes[(position + 8)..<(position + 12)].reduce(0) { $0 << 8 | Int($1) }
            let opaque = bytes[(position + 12)..<(position + 16)].reduce(0) { $0 << 8 | Int($1) }
            let keyStart = position + 24 + extrasLength
            let key = String(decoding: bytes[keyStart..<(keyStart + keyLength)], as: UTF8.self)
            let value = String(decoding: bytes[(keyStart + keyLength)..<(position + 24 + body)], as: UTF8.self)
            out.append("op=\(bytes[position + 1]) status=\(status) opaque=\(opaque) key=\(key) value=\(value)")
            position += 24 + body
        }
        return out
    }

    func exchange(_ port: Int, _ request: [UInt8], expect count: Int) throws -> [String] {
        let client = try TestClient(port: port)
        try client.send(request)
        return read(client, count)
    }

    /// Reads until `count` response packets have come (or 5 s pass, or the peer closes).
    func read(_ client: TestClient, _ count: Int) -> [String] {
        var data: [UInt8] = []
        let deadline = Date().addingTimeInterval(5)
        while responses(data).count < count, Date() < deadline {
            let (chunk, closed) = client.drain(for: 0.2)
            data += chunk
            if closed { break }
        }
        return responses(data)
    }

    /// A quiet batch spread over two servers, closed by Noop: misses and successful quiet
    /// stores are silent, an error is reported, Noop comes last: as one memcached answers.
    func testQuietBatchAcrossServersAnswersAsOneMemcached() throws {
        let backends = try [group.memcached(), group.memcached()]
        let reference = try group.memcached()
        let tern = try start(backends)
        // Varied keys: short keys differing in one byte can all fall on one ketama arc.
        let placed = (0..<2000).map { "q\($0):\(($0 &* 2654435761) % 1000003)" }.map { key in (key, Array(key.utf8).withUnsafeBytes { tern.pool.placement().server(forKey: $0)! }) }
        let keys = placed.filter { $0.1 == 0 }.prefix(5).map(\.0) + placed.filter { $0.1 == 1 }.prefix(5).map(\.0)
        var batch: [UInt8] = []
        var opaque: UInt32 = 1
        for key in keys { batch += packet(0x11, key: key, extras: [0, 0, 0, 7, 0, 0, 0, 0], value: Array("v-\(key)".utf8), opaque: opaque); opaque += 1 }
        batch += packet(0x12, key: keys[3], extras: [0, 0, 0, 0, 0, 0, 0, 0], value: Array("dup".utf8), opaque: 100)  // AddQ on an existing key
        for key in keys + ["absent1", "absent2"] { batch += packet(0x0d, key: key, opaque: opaque); opaque += 1 }  // GetKQ
        batch += packet(0x0a, opaque: 999)  // Noop
        let direct = try exchange(reference.port, batch, expect: 12)
        let through = try exchange(tern.port, batch, expect: 12)
        XCTAssertEqual(direct.count, 12, direct.joined(separator: "\n"))
        XCTAssertEqual(through, direct)
        XCTAssertEqual(through.last, "op=10 status=0 opaque=999 key= value=")
        XCTAssertEqual(through.first, "op=18 status=2 opaque=100 key= value=Data exists for key.")
        let servers = Set(keys.map { key in Array(key.utf8).withUnsafeBytes { tern.pool.placement().server(forKey: $0)! } })
        XCTAssertEqual(servers.count, 2, "the batch spans both servers")
    }

    /// Bad input: error statuses where framing holds, a close where it does not, nothing
    /// buffered before lengths are checked, another binary client unaffected.
    func testHostileBinaryInput() throws {
        let backend = try group.memcached()
        let tern = try start([backend])
        let bystander = try TestClient(port: tern.port)
        try bystander.send(packet(0x01, key: "b", extras: [0, 0, 0, 0, 0, 0, 0, 0], value: Array("safe".utf8), opaque: 1))
        // Unknown opcode: 0x0081 with the opaque, connection kept.
        XCTAssertEqual(try exchange(tern.port, packet(0x55, key: "x", opaque: 77) + packet(0x0a, opaque: 78), expect: 2),
                       ["op=85 status=129 opaque=77 key= value=Unknown command", "op=10 status=0 opaque=78 key= value="])
        // Key and extras longer than the body: invalid arguments, body dropped, next packet served.
        var inconsistent = packet(0x00, key: "abc", opaque: 5)
        inconsistent[11] = 2  // body length 2 < key length 3
        XCTAssertEqual(try exchange(tern.port, Array(inconsistent.prefix(26)) + packet(0x0a, opaque: 6), expect: 2),
                       ["op=0 status=4 opaque=5 key= value=Invalid arguments", "op=10 status=0 opaque=6 key= value="])
        // A 100 MB body is refused from its header; its bytes are dropped as they come.
        let huge = packet(0x01, key: "h", extras: [0, 0, 0, 0, 0, 0, 0, 0], opaque: 9)
        var hugeHeader = Array(huge.prefix(24))
        let body = 100 << 20
        for (index, shift) in [24, 16, 8, 0].enumerated() { hugeHeader[8 + index] = UInt8(truncatingIfNeeded: body >> shift) }
        let client = try TestClient(port: tern.port)
        try client.send(hugeHeader)
        for _ in 0..<100 { try client.send([UInt8](repeating: 0x41, count: 1 << 20)) }
        try client.send(packet(0x0a, opaque: 10))
        XCTAssertEqual(read(client, 2), ["op=1 status=3 opaque=9 key= value=Too large.", "op=10 status=0 opaque=10 key= value="])
        // A header arriving byte by byte.
        let slow = try TestClient(port: tern.port)
        for byte in packet(0x00, key: "b", opaque: 11) { try slow.send([byte]); usleep(2000) }
        XCTAssertEqual(read(slow, 1), ["op=0 status=0 opaque=11 key= value=safe"])
        // Wrong magic after the first packet: framing is lost, the connection closes.
        let lost = try TestClient(port: tern.port)
        try lost.send(packet(0x0a, opaque: 12) + Array("get b\r\n".utf8) + [UInt8](repeating: 0, count: 20))
        let (bytes, closed) = lost.drain(for: 2)
        XCTAssertEqual(responses(bytes), ["op=10 status=0 opaque=12 key= value="])
        XCTAssertTrue(closed)
        // The same after the first packet's reply was read: nothing else to write (before, the
        // connection stayed open, was never read again, and a worker spun on it; binary sweep
        // 32), also with more bytes coming.
        for trailing in [[], [UInt8](repeating: 0x41, count: 100)] {
            let late = try TestClient(port: tern.port)
            try late.send(packet(0x0a, opaque: 13))
            XCTAssertEqual(read(late, 1), ["op=10 status=0 opaque=13 key= value="])
            var bad = packet(0x0a, opaque: 14)
            bad[0] = 0x81
            try late.send(bad)
            try? late.send(trailing)
            let (after, ended) = late.drain(for: 2)
            XCTAssertEqual(after, [])
            XCTAssertTrue(ended, "closed at once")
        }
        // The bystander was never disturbed.
        try bystander.send(packet(0x00, key: "b", opaque: 2))
        XCTAssertEqual(read(bystander, 2), ["op=1 status=0 opaque=1 key= value=", "op=0 status=0 opaque=2 key= value=safe"])
    }

    /// Misses, QuitQ and Stat answered as memcached answers them, byte for byte against a direct
    /// memcached, on a plain pool and on a warm-up pool (found by a sweep of libmemcached, dalli,
    /// php-memcached and memccapable):
    /// - a Get or GetK of a key missing from both pools of a warm-up answered success with an
    ///   empty body (dalli's `get` returned true); GetK and GATK misses carry the key and no
    ///   text, as memcached sends them (Tern sent no key and "Not found");
    /// - QuitQ alone left the connection open, reading nothing (memccapable `quitq` hung);
    /// - Stat `reset` answered success and reset nothing: now "Not found", as memcached answers
    ///   a group it does not know, and as text `stats reset` answers `ERROR`.
    func testMissesQuitQAndStatAnswerAsOneMemcached() throws {
        let reference = try group.memcached()
        let plain = try start([try group.memcached()])
        let warmPort = ProcessGroup.freePort()
        try group.tern(config: "w:\n  listen: 127.0.0.1:\(warmPort)\n  timeout: 1000\n  servers:\n   - \(try group.memcached().address):1\n"
                       + "  warmup:\n    servers:\n     - \(try group.memcached().address):1\n", arguments: ["--threads", "1"], waitPort: warmPort)
        let ttl: [UInt8] = [0, 0, 0, 100]
        let misses = packet(0x00, key: "absent", opaque: 1) + packet(0x0c, key: "absent", opaque: 2) + packet(0x1d, key: "absent", extras: ttl, opaque: 3)
            + packet(0x23, key: "absent", extras: ttl, opaque: 4) + packet(0x09, key: "absent", opaque: 5) + packet(0x0d, key: "absent", opaque: 6)
            + packet(0x10, key: "bogus", opaque: 7) + packet(0x0a, opaque: 8)
        let expected = ["op=0 status=1 opaque=1 key= value=Not found", "op=12 status=1 opaque=2 key=absent value=",
                        "op=29 status=1 opaque=3 key= value=Not found", "op=35 status=1 opaque=4 key=absent value=",
                        "op=16 status=1 opaque=7 key= value=Not found", "op=10 status=0 opaque=8 key= value="]
        XCTAssertEqual(try exchange(reference.port, misses, expect: 6), expected, "memcached")
        // An Add with a CAS: Not found, nothing stored (Tern's meta add ignored the CAS and
        // stored the value, which other clients then read; a framing sweep, fails on 33c56b3).
        let addWithCAS = packet(0x02, key: "addcas", extras: [0, 0, 0, 0, 0, 0, 0, 0], value: Array("v".utf8), opaque: 12, cas: 5)
            + packet(0x00, key: "addcas", opaque: 13)
        let addExpected = ["op=2 status=1 opaque=12 key= value=Not found", "op=0 status=1 opaque=13 key= value=Not found"]
        XCTAssertEqual(try exchange(reference.port, addWithCAS, expect: 2), addExpected, "memcached")
        XCTAssertEqual(try exchange(plain.port, addWithCAS, expect: 2), addExpected)
        // On an existing key it is a compare-and-swap, as memcached stores it: Exists on another
        // CAS, stored on its own (always Not found before; binary sweep 30). A Touch answers the
        // item's flags and CAS, as memcached's does (none before).
        for port in [reference.port, plain.port] {
            let client = try TestClient(port: port)
            func one(_ request: [UInt8]) throws -> (status: Int, extras: [UInt8], cas: UInt64, value: String) {
                try client.send(request)
                var data: [UInt8] = []
                let deadline = Date().addingTimeInterval(5)
                while responses(data).isEmpty, Date() < deadline { data += client.drain(for: 0.1).bytes }
                guard data.count >= 24 else { return (-1, [], 0, "") }
                let extras = Array(data[24..<(24 + Int(data[4]))])
                return (Int(data[6]) << 8 | Int(data[7]), extras, data[16..<24].reduce(0) { $0 << 8 | UInt64($1) },
                        String(decoding: data[(24 + extras.count + (Int(data[2]) << 8 | Int(data[3])))...], as: UTF8.self))
            }
            let stored = try one(packet(0x01, key: "addcas2", extras: [0, 0, 0, 9, 0, 0, 0, 0], value: Array("old".utf8), opaque: 20))
            XCTAssertEqual(stored.status, 0, "port \(port)")
            let other = try one(packet(0x02, key: "addcas2", extras: [0, 0, 0, 9, 0, 0, 0, 0], value: Array("bad".utf8), opaque: 21, cas: stored.cas &+ 1000))
            XCTAssertEqual(other.status, 2, "port \(port): \(other.value)")
            let swapped = try one(packet(0x02, key: "addcas2", extras: [0, 0, 0, 9, 0, 0, 0, 0], value: Array("new".utf8), opaque: 22, cas: stored.cas))
            XCTAssertEqual(swapped.status, 0, "port \(port): \(swapped.value)")
            let touched = try one(packet(0x1c, key: "addcas2", extras: [0, 0, 0, 100], opaque: 23))
            XCTAssertEqual(touched.status, 0, "port \(port)")
            XCTAssertEqual(touched.extras, [0, 0, 0, 9], "port \(port): the item's flags")
            XCTAssertEqual(touched.cas, swapped.cas, "port \(port): the item's CAS")
            XCTAssertNotEqual(touched.cas, 0, "port \(port)")
            XCTAssertEqual(try one(packet(0x00, key: "addcas2", opaque: 24)).value, "new", "port \(port)")
        }
        for port in [plain.port, warmPort] {
            XCTAssertEqual(try exchange(port, misses, expect: 6), expected, "port \(port)")
            // Tern does not reset its servers' figures: refused, as an unknown group.
            XCTAssertEqual(try exchange(port, packet(0x10, key: "reset", opaque: 9), expect: 1), ["op=16 status=1 opaque=9 key= value=Not found"])
            XCTAssertEqual(try exchange(port, packet(0x10, key: "items", opaque: 10), expect: 1), ["op=16 status=0 opaque=10 key= value="])
            // QuitQ alone, and QuitQ behind a request: the connection closes, nothing more is said.
            for request in [packet(0x17), packet(0x0a, opaque: 11) + packet(0x17)] {
                let client = try TestClient(port: port)
                try client.send(request)
                let (bytes, closed) = client.drain(for: 2)
                XCTAssertTrue(closed, "port \(port): closed after QuitQ")
                XCTAssertEqual(responses(bytes), request.count > 24 ? ["op=10 status=0 opaque=11 key= value="] : [])
            }
        }
        for request in [packet(0x17), packet(0x0a, opaque: 11) + packet(0x17)] {
            let client = try TestClient(port: reference.port)
            try client.send(request)
            XCTAssertTrue(client.drain(for: 2).closed, "memcached closes too")
        }
    }

    /// pylibmc binary=True with ketama writes straight to three memcached; through Tern's
    /// ketama_libmemcached pool, the same client (binary) finds every key where it put it, and
    /// a warm-up pool serves binary clients from the old pool and copies (flags kept).
    func testPylibmcBinaryKetamaMigrationAndWarmup() throws {
        let old = try [group.memcached(), group.memcached(), group.memcached()]
        let port = ProcessGroup.freePort()
        let new = try group.memcached()
        let config = "w:\n  listen: 127.0.0.1:\(port)\n  timeout: 1000\n  servers:\n   - \(new.address):1\n  warmup:\n    distribution: ketama_libmemcached\n    hash: one_at_a_time\n    servers:\n"
            + old.map { "     - \($0.address):1\n" }.joined()
        try group.tern(config: config, arguments: ["--threads", "2"], waitPort: port)
        let servers = old.map { "\"\($0.address)\"" }.joined(separator: ", ")
        try pylibmc("""
        direct = pylibmc.Client([\(servers)], binary=True, behaviors={"ketama": True})
        keys = ["user:%d:profile" % (i * 7919) for i in range(300)]
        for k in keys: assert direct.set(k, k + "-v")
        direct.set("flagged", 42)
        through = pylibmc.Client(["127.0.0.1:\(port)"], binary=True)
        got = through.get_multi(keys)
        assert len(got) == 300 and all(got[k] == k + "-v" for k in keys), len(got)
        assert through.get("flagged") == 42
        import time; time.sleep(0.3)
        copied = pylibmc.Client(["\(new.address)"], binary=True)
        assert copied.get("flagged") == 42 and copied.get(keys[0]) == keys[0] + "-v", "copied into the new pool with flags"
        assert through.delete(keys[1]) and direct.get(keys[1]) is None, "deletes reach both pools"
        """)
    }

    /// Keys a binary client stored with a space, CR, LF or NUL in the old pool are found there
    /// through a warm-up pool, and copied with their flags. memcached writes such a key back
    /// raw, and Tern matched the old server's replies by the key it wrote: they were always
    /// misses, and a LF in one reset the old server's shared connection at every read, so an
    /// innocent client's old hits were misses too (binary sweep 32; fails on a84b660). Replies
    /// are now matched by an opaque.
    func testRawKeysStoredByBinaryClientsAreFoundInTheOldPool() throws {
        let old = try group.memcached(), new = try group.memcached()
        let port = ProcessGroup.freePort()
        try group.tern(config: "w:\n  listen: 127.0.0.1:\(port)\n  timeout: 1000\n  servers:\n   - \(new.address):1\n"
                       + "  warmup:\n    servers:\n     - \(old.address):1\n", arguments: ["--threads", "1"], waitPort: port)
        let odd = ["old 2", "old\n3", "old\r4", "old\u{0}5", "plain6"]
        let direct = try TestClient(port: old.port)
        for (index, key) in odd.enumerated() {
            try direct.send(packet(0x01, key: key, extras: [0, 0, 0, UInt8(index + 7), 0, 0, 0, 0], value: Array("v\(index)".utf8), opaque: UInt32(index)))
            XCTAssertEqual(read(direct, 1), ["op=1 status=0 opaque=\(index) key= value="], key)
        }
        XCTAssertEqual(try TestClient(port: old.port).request("set innocent 0 0 1\r\ni\r\n", until: "\r\n"), "STORED\r\n")
        let client = try TestClient(port: port), innocent = try TestClient(port: port)
        for (index, key) in odd.enumerated() {
            try client.send(packet(0x0c, key: key, opaque: UInt32(100 + index)))
            XCTAssertEqual(read(client, 1), ["op=12 status=0 opaque=\(100 + index) key=\(key) value=v\(index)"], key)
            XCTAssertEqual(try innocent.request("get innocent\r\n", until: "END\r\n"), "VALUE innocent 0 1\r\ni\r\nEND\r\n")
        }
        // Copied into the new pool, flags kept: read there directly.
        let copied = try TestClient(port: new.port)
        XCTAssertEqual(try eventually("copied") {
            try copied.send(packet(0x0c, key: "old\n3", opaque: 9))
            return read(copied, 1) == ["op=12 status=0 opaque=9 key=old\n3 value=v1"] ? "copied" : "not yet"
        }, "copied")
    }

    /// An old-pool hit that is not copied (`backfill: false`; with backfill on, an item with
    /// 1 s or less to live) is answered from the old item: to pylibmc's binary get, and to
    /// text `gets` with CAS unique 0 (the record had no unique, so every binary get of such an
    /// item failed with an internal error and text `gets` clients could not parse it).
    func testOldHitsNotCopiedReachBinaryAndGetsClients() throws {
        for backfill in [false, true] {
            let old = try group.memcached(), new = try group.memcached()
            let port = ProcessGroup.freePort()
            try group.tern(config: "w:\n  listen: 127.0.0.1:\(port)\n  timeout: 1000\n  servers:\n   - \(new.address):1\n"
                           + "  warmup:\n    backfill: \(backfill)\n    servers:\n     - \(old.address):1\n", arguments: ["--threads", "1"], waitPort: port)
            let ttl = backfill ? 1 : 0
            try pylibmc("""
            direct = pylibmc.Client(["\(old.address)"])
            for k in ("bin", "text"): assert direct.set(k, k + "-old", time=\(ttl))
            binary = pylibmc.Client(["127.0.0.1:\(port)"], binary=True)
            assert binary.get("bin") == "bin-old", binary.get("bin")
            text = pylibmc.Client(["127.0.0.1:\(port)"], behaviors={"cas": True})
            value, cas = text.gets("text")
            assert value == "text-old" and cas == 0, (value, cas)
            assert pylibmc.Client(["\(new.address)"]).get("bin") is None, "not copied"
            """)
            XCTAssertEqual(try TestClient(port: port).request("gets text bin\r\n", until: "END\r\n"),
                           "VALUE text 16 8 0\r\ntext-old\r\nVALUE bin 16 7 0\r\nbin-old\r\nEND\r\n", "backfill \(backfill)")
        }
    }

    /// python-binary-memcached (bmemcached), a pure-Python binary client, through Tern.
    func testBmemcachedClient() throws {
        let run = ProcessGroup.run
        guard (try? run("/usr/bin/env", ["python3", "-c", "import bmemcached"]).0) == 0 else {
            throw XCTSkip("python-binary-memcached is not installed (Deploy/install-packages.sh installs it)")
        }
        let backends = try [group.memcached(), group.memcached()]
        let tern = try start(backends)
        let (status, text) = try run("/usr/bin/env", ["python3", "-c", """
        import bmemcached
        c = bmemcached.Client(("127.0.0.1:\(tern.port)",))
        assert c.set("bm:a", "alpha") and c.get("bm:a") == "alpha"
        assert c.set_multi({"bm:%d" % i: i for i in range(30)}) is not False
        got = c.get_multi(["bm:%d" % i for i in range(30)] + ["bm:none"])
        assert got == {"bm:%d" % i: i for i in range(30)}, got
        assert c.incr("bm:5", 10) == 15 and c.decr("bm:5", 3) == 12
        assert c.add("bm:a", "x") is False and c.replace("bm:a", "beta") and c.get("bm:a") == "beta"
        value, cas = c.gets("bm:a")
        assert c.cas("bm:a", "gamma", cas) and not c.cas("bm:a", "delta", cas)
        assert c.delete("bm:a") and c.get("bm:a") is None
        print("ok")
        """])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(text.hasSuffix("ok\n"), text)
    }
}
