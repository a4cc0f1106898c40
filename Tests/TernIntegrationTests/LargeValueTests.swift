import Foundation
import XCTest

/// Large Redis values: a bulk reply of 256 KiB or more, to a client waiting for nothing before
/// it, is streamed to the client as it arrives instead of being buffered whole and copied.
final class LargeValueTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    /// Python for the scripts below: Tern's pid, `status('VmHWM')` in bytes, and whether memory
    /// is checked at all (it says nothing under the sanitizers: there bytes and order are).
    func memoryProbe(_ tern: Process) -> String {
        let checksMemory = ProcessInfo.processInfo.environment["TERN_SANITIZED"] == nil
        return """
            pid = \(tern.processIdentifier)
            checks_memory = \(checksMemory ? "True" : "False")
            def status(field):
                for line in open('/proc/%d/status' % pid):
                    if line.startswith(field): return int(line.split()[1]) * 1024
            """
    }

    /// Tern with one Redis pool `r` over `backends`, one worker; `extra` adds pool keys.
    func startTern(_ backends: [RedisServer], timeout: Int, extra: String = "") throws -> (port: Int, process: Process) {
        let port = ProcessGroup.freePort()
        let process = try group.tern(config: """
            r:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: \(timeout)
            \(extra)  servers:
            \(backends.map { "   - \($0.address):1\n" }.joined())
            """, arguments: ["--threads", "1"], waitPort: port)
        return (port, process)
    }

    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    /// Bytes exact for large values mixed with small ones in a pipeline (streamed and buffered
    /// replies in order), a second client served meanwhile; and Tern's peak memory while it
    /// answers a 32 MiB GET rises by no more than the reply plus fixed buffers (before
    /// streaming, the reply sat whole in the backend connection's buffer and was copied whole
    /// to the client's: twice its size and the buffer's growth).
    func testLargeBulkRepliesAreStreamedInOrderWithinTheirSize() throws {
        let backends = try [group.redis(), group.redis()]
        let (port, tern) = try startTern(backends, timeout: 5000)
        try python("""
            import os
            \(memoryProbe(tern))
            r = redis.Redis(port=\(port), socket_timeout=20)
            other = redis.Redis(port=\(port), socket_timeout=20)
            values = {('big%d' % i): os.urandom((1 << 20) * (i + 1) + i) for i in range(4)}
            for k, v in values.items(): r.set(k, v)
            # A pipeline: streamed replies (big*), small ones between them, a miss, an error.
            p = r.pipeline(transaction=False)
            for k in values:
                p.get(k); p.set('small:' + k, k); p.get('small:' + k)
            p.get('missing'); p.incr('big0')
            out = p.execute(raise_on_error=False)
            for i, (k, v) in enumerate(values.items()):
                assert out[3 * i] == v, (k, len(out[3 * i] or b''))
                assert out[3 * i + 1] is True and out[3 * i + 2] == k.encode()
            assert out[12] is None
            assert isinstance(out[13], redis.exceptions.ResponseError), out[13]
            assert other.get('small:big1') == b'big1'
            # Peak memory for one 32 MiB reply.
            huge = os.urandom(32 << 20)
            r.set('huge', huge)
            open('/proc/%d/clear_refs' % pid, 'w').write('5')
            base = status('VmHWM')
            assert r.get('huge') == huge
            grew = status('VmHWM') - base
            assert grew <= (32 << 20) + (12 << 20) or not checks_memory, 'peak grew by %d MiB' % (grew >> 20)
            """)
    }

    /// A large reply that arrives while an earlier request of the same pipeline is still
    /// waiting (its server paused) waits in its slot, then leaves whole and in order.
    func testLargeReplyBehindASlowOneKeepsItsOrderAndBytes() throws {
        let backends = try [group.redis(), group.redis()]
        let (port, _) = try startTern(backends, timeout: 5000)
        let client = try TestClient(port: port, timeout: 20)
        // A small key on one server and a large value on the other.
        var keys: [Int: String] = [:]
        for index in 0..<64 where keys.count < 2 {
            // Keys that differ in more than one byte (ketama with fnv1a_64 puts short keys that
            // differ in one byte on one server).
            let key = "large-test:\(String(index &* 2_654_435_761 % 1_000_003, radix: 36)):\(index)"
            XCTAssertEqual(try client.call("SET", key, "small"), "+OK\r\n")
            let server = try backends[0].call("EXISTS", key) == ":1\r\n" ? 0 : 1
            if keys[server] == nil { keys[server] = key }
        }
        let (slowKey, bigKey) = (try XCTUnwrap(keys[0]), try XCTUnwrap(keys[1]))
        let big = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 11) }
        // SET with a binary value: encoded by hand.
        var set = Array("*3\r\n$3\r\nSET\r\n$\(bigKey.utf8.count)\r\n\(bigKey)\r\n$\(big.count)\r\n".utf8)
        set += big + Array("\r\n".utf8)
        try client.send(set)
        XCTAssertEqual(String(decoding: try client.receiveReplies(1), as: UTF8.self), "+OK\r\n")
        backends[0].pause()
        try client.send(TestClient.encode(["GET", slowKey]) + TestClient.encode(["GET", bigKey]) + TestClient.encode(["PING"]))
        usleep(300_000)
        backends[0].resume()
        let replies = try client.receiveReplies(3)
        let expected = Array("$5\r\nsmall\r\n$\(big.count)\r\n".utf8) + big + Array("\r\n+PONG\r\n".utf8)
        XCTAssertEqual(replies.count, expected.count)
        XCTAssertTrue(replies == expected, "replies differ from the first byte at \(zip(replies, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1)")
    }

    /// Large requests (256 KiB or more) that fill their client's buffer are handed to the
    /// backend connection with that memory instead of being copied, while other clients'
    /// requests queue on the same connection before and after them: every value arrives
    /// exact, the innocent client is never answered wrongly, a slow-log entry reads an
    /// adopted request, and Tern's peak memory for a 32 MiB SET rises by no more than the
    /// value plus fixed buffers (before: the client buffer's doublings, then a second copy in
    /// the backend connection's buffer).
    func testLargeRequestsTakeTheirClientsBufferInsteadOfACopy() throws {
        let backend = try group.redis()
        let (port, tern) = try startTern([backend], timeout: 10000, extra: "  slowlog_log_slower_than: 0\n  slowlog_max_len: 4096\n")
        try python("""
            import os, threading
            \(memoryProbe(tern))
            direct = redis.Redis(port=\(backend.port), socket_timeout=30)
            errors = []
            def writer(n):
                try:
                    r = redis.Redis(port=\(port), socket_timeout=30)
                    for i in range(6):
                        v = os.urandom((256 << 10) + (n * 6 + i) * 99991)
                        if i % 2:
                            # Followed in the same write by a small request: not all of the buffer.
                            p = r.pipeline(transaction=False)
                            p.set('w%d:%d' % (n, i), v); p.incr('w%d:n' % n)
                            assert p.execute() == [True, (i + 1) // 2]
                        else:
                            assert r.set('w%d:%d' % (n, i), v)
                        got = direct.get('w%d:%d' % (n, i))
                        assert got == v, ('w%d:%d' % (n, i), len(got or b''), len(v))
                except Exception as e:
                    errors.append(repr(e))
            def innocent():
                try:
                    r = redis.Redis(port=\(port), socket_timeout=30)
                    for i in range(300):
                        r.set('innocent', str(i))
                        assert r.get('innocent') == str(i).encode()
                except Exception as e:
                    errors.append('innocent: ' + repr(e))
            threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=innocent)]
            for t in threads: t.start()
            for t in threads: t.join()
            assert not errors, errors
            r = redis.Redis(port=\(port), socket_timeout=30)
            # The slow log (every request is slow here) reads requests where they wait for their
            # reply, adopted ones included: the SET's key, its value cut as Redis cuts it.
            # (Kept long enough for the innocent client's 600 entries: with 128, a slow writer's
            # SETs were pushed out under TSan.)
            entries = [e for e in r.slowlog_get(4096) if e['command'].startswith(b'SET w')]
            assert entries, r.slowlog_get(5)
            assert all(b'more bytes' in e['command'] for e in entries), entries[0]['command'][:80]
            # The issue's pipeline, smaller: five large SETs in one write, then an MGET of them.
            values = [os.urandom((3 << 20) + i) for i in range(5)]
            p = r.pipeline(transaction=False)
            for i, v in enumerate(values): p.set('p%d' % i, v)
            p.mget(['p%d' % i for i in range(5)])
            out = p.execute()
            assert out[:5] == [True] * 5 and out[5] == values, [len(x or b'') if isinstance(x, bytes) else x for x in out[:5]]
            assert [direct.get('p%d' % i) for i in range(5)] == values
            huge = os.urandom(32 << 20)
            open('/proc/%d/clear_refs' % pid, 'w').write('5')
            base = status('VmHWM')
            assert r.set('huge', huge)
            grew = status('VmHWM') - base
            assert direct.get('huge') == huge
            assert grew <= (32 << 20) + (12 << 20) or not checks_memory, 'peak grew by %d MiB' % (grew >> 20)
            # An array reply (not streamed): its buffer is sized from the declared lengths, and
            # once complete it becomes the client's output with its memory, not copied. (Peak
            # growth for these 35 MiB, measured: 91 MiB before, 63 MiB after; not asserted, as
            # the allocator's reuse of earlier buffers moves it by several MiB.)
            assert r.rpush('list', huge, values[0]) == 2
            assert r.lrange('list', 0, -1) == [huge, values[0]]
            assert r.lrange('list', 0, 0) == [huge]
            """)
    }

    /// Large requests from many clients at once reuse the worker's large blocks: after a warm-up
    /// burst, 200 SETs of 1 MiB from ten clients fault in few pages each (every page of a fresh
    /// block faults once: about 80 a SET without the cache, 6 to 7 with it, measured), and a few
    /// seconds after the burst the blocks have left the process (anonymous memory back to what
    /// it was). Values checked against the server.
    func testLargeRequestsReuseTheWorkersBlocksAndGiveThemBack() throws {
        let backend = try group.redis()
        let (port, tern) = try startTern([backend], timeout: 10000)
        try python("""
            import os
            \(memoryProbe(tern))
            def minor_faults():
                return int(open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[7])
            direct = redis.Redis(port=\(backend.port), socket_timeout=30)
            values = [os.urandom((1 << 20) + i) for i in range(8)]
            errors = []
            def writer(n, rounds):
                try:
                    r = redis.Redis(port=\(port), socket_timeout=30)
                    for i in range(rounds):
                        assert r.set('b%d' % n, values[(n + i) % 8])
                except Exception as e:
                    errors.append(repr(e))
            def burst(rounds):
                threads = [threading.Thread(target=writer, args=(n, rounds)) for n in range(10)]
                for t in threads: t.start()
                for t in threads: t.join()
                assert not errors, errors
            time.sleep(1)
            before = status('RssAnon')
            burst(5)
            faults = minor_faults()
            burst(20)
            per_set = (minor_faults() - faults) / 200
            assert [direct.get('b%d' % n) for n in range(10)] == [values[(n + 19) % 8] for n in range(10)]
            assert per_set < 40 or not checks_memory, 'page faults per 1 MiB SET: %.1f' % per_set
            time.sleep(4.5)
            after = status('RssAnon')
            assert after <= before + (4 << 20) or not checks_memory, 'anonymous memory %d KiB before the bursts, %d KiB after' % (before >> 10, after >> 10)
            """)
    }

    /// A multi-key read split over servers (Redis MGET, memcached multi-get) with large values:
    /// each large part reply is kept in the backend buffer it arrived in and copied once, into
    /// the client's output, in key order; an MGET whose keys are all on one server is forwarded
    /// whole and its reply becomes the output without a copy. Bytes exact (large and small
    /// values, misses, keys of both servers interleaved), an innocent client served meanwhile.
    /// The peaks of a merged and a one-server MGET are printed, not asserted: the bounds meant
    /// (2x and 1x the reply plus fixed buffers) are not met yet, see the comments there.
    func testLargeMergedRepliesAreCopiedOnce() throws {
        let redisA = try group.redis(), redisB = try group.redis()
        let memcachedA = try group.memcached(extra: ["-I", "16m", "-m", "256"])
        let memcachedB = try group.memcached(extra: ["-I", "16m", "-m", "256"])
        let redisPort = ProcessGroup.freePort(), memcachePort = ProcessGroup.freePort()
        let tern = try group.tern(config: """
            r:
              listen: 127.0.0.1:\(redisPort)
              redis: true
              timeout: 20000
              hash_tag: "{}"
              client_output_limit: 268435456
              servers:
               - \(redisA.address):1
               - \(redisB.address):1
            m:
              listen: 127.0.0.1:\(memcachePort)
              timeout: 20000
              client_output_limit: 268435456
              max_item_size: 16777216
              servers:
               - \(memcachedA.address):1
               - \(memcachedB.address):1
            """, arguments: ["--threads", "1"], waitPort: redisPort)
        try python("""
            import os, threading
            from pymemcache.client.base import Client
            \(memoryProbe(tern))
            r = redis.Redis(port=\(redisPort), socket_timeout=60)
            errors = []
            done = threading.Event()
            def innocent():
                try:
                    c = redis.Redis(port=\(redisPort), socket_timeout=30)
                    i = 0
                    while not done.is_set():
                        c.set('innocent', str(i))
                        assert c.get('innocent') == str(i).encode()
                        i += 1
                except Exception as e:
                    errors.append('innocent: ' + repr(e))
            bystander = threading.Thread(target=innocent, daemon=True); bystander.start()
            # Keys on both servers, large and small values interleaved, two misses. They differ in
            # their first bytes: keys differing only in the last (big0..big9) can all land on one
            # server with ketama/fnv1a_64 for some port pairs.
            keys = ['%d:big' % i for i in range(10)]
            values = [os.urandom((4 << 20) + i * 7) if i % 2 == 0 else b'small%d' % i for i in range(10)]
            for k, v in zip(keys, values): assert r.set(k, v)
            placed = {redis.Redis(port=p).dbsize() for p in (\(redisA.port), \(redisB.port))}
            assert 0 not in placed, placed
            asked = keys[:3] + ['missing1'] + keys[3:] + ['missing2']
            expected = values[:3] + [None] + values[3:] + [None]
            for _ in range(3): assert r.mget(asked) == expected
            big = keys[0::2]
            open('/proc/%d/clear_refs' % pid, 'w').write('5')
            base = status('VmHWM')
            assert r.mget(big) == values[0::2]
            grew = status('VmHWM') - base
            total = sum(len(v) for v in values[0::2])
            # The kept parts' pages go back as their records are copied out, so the merge holds
            # about its size once, not twice (71 MiB measured for these 20 MiB before that,
            # 20 to 21 MiB after). Fixed: a step of pages (1 MiB) and the buffers' read slack.
            report = 'merged MGET: peak grew by %d MiB for %d MiB' % (grew >> 20, total >> 20)
            if checks_memory: assert grew <= total + (8 << 20), report
            # All keys on one server (one hash tag): forwarded whole, reply taken without a copy.
            tagged = ['{t}%d' % i for i in range(5)]
            for k, v in zip(tagged, values[0::2]): assert r.set(k, v)
            open('/proc/%d/clear_refs' % pid, 'w').write('5')
            base = status('VmHWM')
            assert r.mget(tagged) == values[0::2]
            grew = status('VmHWM') - base
            # Forwarded whole and handed to the client with its buffer's memory: the size once.
            report += '; one-server MGET: peak grew by %d MiB' % (grew >> 20)
            if checks_memory: assert grew <= total + (8 << 20), report
            # memcached: a multi-get over both servers, records in key order, misses left out.
            m = Client(('127.0.0.1', \(memcachePort)), timeout=60, default_noreply=False)
            for k, v in zip(keys, values): assert m.set(k, v)
            open('/proc/%d/clear_refs' % pid, 'w').write('5')
            base = status('VmHWM')
            got = m.get_many(asked)
            grew = status('VmHWM') - base
            assert set(got) == set(keys) and all(got[k] == v for k, v in zip(keys, values)), sorted(got)
            # Each part's buffer sized once from its VALUE lines, kept, and given back as copied.
            report += '; memcached multi-get: peak grew by %d MiB' % (grew >> 20)
            if checks_memory: assert grew <= total + (8 << 20), report
            m.sock.sendall(('get ' + ' '.join(asked) + '\\r\\n').encode())
            want = b''.join(b'VALUE %s 0 %d\\r\\n%s\\r\\n' % (k.encode(), len(v), v) for k, v in zip(keys, values)) + b'END\\r\\n'
            raw = b''
            while len(raw) < len(want):
                chunk = m.sock.recv(1 << 20)
                if not chunk: break
                raw += chunk
            assert raw == want, (len(raw), len(want))
            done.set(); bystander.join()
            assert not errors, errors
            """)
    }
}
