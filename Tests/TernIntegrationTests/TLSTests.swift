import Foundation
import XCTest
@testable import TernCore

/// Test certificates made with `openssl` in the test's directory (no private key is committed):
/// a CA, a server certificate for localhost and 127.0.0.1, and client certificates.
struct TestCertificates {
    let directory: String
    var ca: String { directory + "/ca.crt" }
    var serverCert: String { directory + "/server.crt" }
    var serverKey: String { directory + "/server.key" }

    init(in directory: String) throws {
        self.directory = directory
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", directory + "/ca.key", "-out", ca,
                     "-days", "2", "-subj", "/CN=Tern Test CA"])
        try issue(name: "server", subject: "/CN=localhost", san: "DNS:localhost,IP:127.0.0.1")
    }

    /// A certificate and key signed by the test CA: `<name>.crt`, `<name>.key`.
    @discardableResult
    func issue(name: String, subject: String, san: String? = nil, signer: String = "ca") throws -> (cert: String, key: String) {
        let cert = directory + "/\(name).crt", key = directory + "/\(name).key"
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", directory + "/\(name).csr", "-subj", subject])
        var arguments = ["x509", "-req", "-in", directory + "/\(name).csr", "-CA", directory + "/\(signer).crt", "-CAkey", directory + "/\(signer).key",
                         "-CAcreateserial", "-out", cert, "-days", "2"]
        if let san {
            try "subjectAltName=\(san)\n".write(toFile: directory + "/\(name).ext", atomically: true, encoding: .utf8)
            arguments += ["-extfile", directory + "/\(name).ext"]
        }
        try openssl(arguments)
        return (cert, key)
    }

    /// A second CA, whose certificates the first does not trust.
    func otherCA(name: String) throws {
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", directory + "/\(name).key", "-out", directory + "/\(name).crt",
                     "-days", "2", "-subj", "/CN=Another CA"])
    }

    private func openssl(_ arguments: [String]) throws {
        let (status, output) = try ProcessGroup.run("/usr/bin/openssl", arguments)
        guard status == 0 else { throw TestError("openssl \(arguments.joined(separator: " ")): \(output)") }
    }
}

/// TLS on both sides: real redis-server (`--tls-port`) and memcached (`-Z`) backends, clients
/// redis-py, redis-cli and pymemcache; mTLS, plain clients on TLS ports, reloads.
final class TLSTests: XCTestCase {
    var group: ProcessGroup!
    var certificates: TestCertificates!

    override func setUpWithError() throws {
        group = ProcessGroup()
        certificates = try TestCertificates(in: group.directory)
    }

    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    /// A redis-server that speaks only TLS on `port`.
    func tlsRedis(clientAuth: Bool = false) throws -> Int {
        let port = ProcessGroup.freePort()
        _ = try group.launch("/usr/bin/redis-server", ["--port", "0", "--tls-port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                                      "--tls-cert-file", certificates.serverCert, "--tls-key-file", certificates.serverKey,
                                                      "--tls-ca-cert-file", certificates.ca, "--tls-auth-clients", clientAuth ? "yes" : "no"],
                             log: "redis-tls-\(port).log")
        try group.waitForPort(port)
        return port
    }

    /// A memcached that speaks only TLS on `port`.
    func tlsMemcached() throws -> Int {
        let port = ProcessGroup.freePort()
        _ = try group.launch("/usr/bin/memcached", ["-p", "\(port)", "-l", "127.0.0.1", "-U", "0", "-u", "root", "-t", "1", "-Z",
                                                   "-o", "ssl_chain_cert=\(certificates.serverCert),ssl_key=\(certificates.serverKey)"],
                             log: "memcached-tls-\(port).log")
        try group.waitForPort(port)
        return port
    }

    /// A Redis pool whose TLS clients may log in by certificate (`user_from_certificate: cn`) as
    /// user `app` (password `app-secret`), with `commands` and `keys` (YAML lists).
    func mutualTLSTern(clientAuth: String, commands: String, keys: String) throws -> (backend: RedisServer, port: Int) {
        let backend = try group.redis()
        let port = ProcessGroup.freePort()
        let hash = SHA256.hex(SHA256.digest(Array("app-secret".utf8)))
        try group.tern(config: """
            r:
              listen: 127.0.0.1:\(port)
              redis: true
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)", ca: "\(certificates.ca)", client_auth: \(clientAuth), user_from_certificate: cn}
              users:
               - name: app
                 password_sha256: "\(hash)"
                 commands: \(commands)
                 keys: \(keys)
              servers: ["\(backend.address):1"]
            """, waitPort: port)
        return (backend, port)
    }

    /// A python3 that has redis-py and pymemcache.
    func pythonWithClients() throws -> String {
        let run = ProcessGroup.run
        guard let python = ["python3", "/usr/bin/python3"].first(where: { (try? run("/usr/bin/env", [$0, "-c", "import redis, pymemcache"]).0) == 0 }) else {
            throw XCTSkip("redis-py and pymemcache are not installed (Deploy/install-packages.sh installs them)")
        }
        return python
    }

    /// Runs a script under a python3 that has redis-py and pymemcache; its last line must be "ok".
    func pythonTLS(_ script: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let run = ProcessGroup.run
        let python = try pythonWithClients()
        let (status, text) = try run("/usr/bin/env", [python, "-c", "import redis, ssl, socket, threading, time\n" + script + "\nprint('ok')"])
        XCTAssertEqual(status, 0, text, file: file, line: line)
        XCTAssertTrue(text.hasSuffix("ok\n"), text, file: file, line: line)
    }

    /// A plain-text client on a TLS port is closed at once (not left hanging), while a TLS
    /// client is served at the same time.
    func assertPlainClientClosed(port: Int, request: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let plain = try TestClient(port: port)
        try plain.send(request)
        let started = Date()
        let (bytes, closed) = plain.drain(for: 3)
        XCTAssertTrue(closed, "a plain-text client on a TLS port must be closed", file: file, line: line)
        XCTAssertLessThan(Date().timeIntervalSince(started), 2.5, "closed at once, not at a timeout", file: file, line: line)
        // What it got back is not a protocol reply (at most a TLS alert record, type 0x15).
        XCTAssertFalse(String(decoding: bytes, as: UTF8.self).contains("PONG"), file: file, line: line)
        XCTAssertFalse(String(decoding: bytes, as: UTF8.self).contains("VERSION"), file: file, line: line)
    }

    func testRedisClientsOverTLSWithRedisPyAndRedisCli() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort(), adminPort = ProcessGroup.freePort()
        try group.tern(config: """
            r:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: 2000
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)", min_version: TLSv1.2}
              servers: ["\(backend.address):1"]
            """, arguments: ["--threads", "2", "-a", "127.0.0.1", "--admin-port", "\(adminPort)"], waitPort: port)

        try pythonTLS("""
            r = redis.Redis(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(certificates.ca)', ssl_cert_reqs='required')
            assert r.ping() is True
            r.set('tls:a', b'\\x00\\xff\\r\\nvalue')
            assert r.get('tls:a') == b'\\x00\\xff\\r\\nvalue', r.get('tls:a')
            # A pipeline of 500 commands: many TLS records each way, replies in order.
            p = r.pipeline(transaction=False)
            for i in range(500): p.set('tls:k%d' % i, 'v%d' % i)
            for i in range(500): p.get('tls:k%d' % i)
            out = p.execute()
            assert out[:500] == [True] * 500
            assert out[500:] == [b'v%d' % i for i in range(500)], out[500:510]
            # Values larger than a TLS record (16 KiB) and than a socket buffer, both ways.
            big = bytes(range(256)) * 8192
            r.set('tls:big', big)
            assert r.get('tls:big') == big
            assert r.mget(['tls:a', 'tls:big', 'tls:none']) == [b'\\x00\\xff\\r\\nvalue', big, None]
            # Frames larger than the 4 MiB a read pass takes, both ways.
            import os
            huge = os.urandom(6 << 20)
            assert r.set('tls:huge', huge) is True
            assert r.get('tls:huge') == huge
            assert r.mget(['tls:huge', 'tls:a', 'tls:huge']) == [huge, b'\\x00\\xff\\r\\nvalue', huge]
            # The default pipeline (MULTI/EXEC) and the negotiated version.
            with r.pipeline() as t:
                t.incr('tls:n'); t.incr('tls:n')
                assert t.execute() == [1, 2]
            s = ssl.create_default_context(cafile='\(certificates.ca)')
            with socket.create_connection(('127.0.0.1', \(port))) as raw:
                with s.wrap_socket(raw, server_hostname='localhost') as tls:
                    assert tls.version() in ('TLSv1.2', 'TLSv1.3'), tls.version()
                    tls.sendall(b'PING\\r\\n')
                    assert tls.recv(100) == b'+PONG\\r\\n'
            """)
        // The backend got the value unchanged.
        XCTAssertEqual(try backend.call("GET", "tls:k499"), "$4\r\nv499\r\n")

        // redis-cli --tls.
        let (status, output) = try ProcessGroup.run("/usr/bin/redis-cli", ["-p", "\(port)", "--tls", "--cacert", certificates.ca, "GET", "tls:k7"])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output, "v7\n")

        // A plain client on the TLS port is closed; a TLS client at the same time is unaffected.
        try assertPlainClientClosed(port: port, request: "PING\r\n")
        try pythonTLS("""
            r = redis.Redis(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(certificates.ca)')
            assert r.get('tls:k1') == b'v1'
            """)
        // A client that sends part of a ClientHello and closes failed its handshake too (it was
        // taken for a health check: TLS sweep 32).
        let truncated = try TestClient(port: port)
        try truncated.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        truncated.close()
        // A client that connects and says nothing is closed when the handshake deadline passes
        // (10 s) — not asserted here to keep the test short; counted in the metrics instead.
        // The plain client and the truncated hello count; connecting and closing without a
        // byte (a TCP health check, like the harness's wait for the port) does not.
        XCTAssertEqual(try eventually("2") {
            let metrics = try httpGet(statsPort: adminPort)
            return metrics.split(separator: "\n").first { $0.hasPrefix("tern_pool_tls_handshake_failures_total{pool=\"r\"} ") }?
                .split(separator: " ").last.map(String.init) ?? metrics
        }, "2")
        let metrics = try httpGet(statsPort: adminPort)
        XCTAssertTrue(metrics.contains("tern_pool_tls_handshakes_total{pool=\"r\"}"), metrics)
    }

    func httpGet(statsPort: Int, target: String = "/metrics") throws -> String {
        let client = try TestClient(port: statsPort)
        try client.send("GET \(target) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return String(decoding: client.drain(for: 3).bytes, as: UTF8.self)
    }

    /// memcached with TLS on both sides: pymemcache's `tls_context` to Tern, Tern to `memcached -Z`.
    func testMemcachedTLSOnBothSidesWithPymemcache() throws {
        let backends = try [tlsMemcached(), tlsMemcached()]
        let port = ProcessGroup.freePort()
        try group.tern(config: """
            m:
              listen: 127.0.0.1:\(port)
              timeout: 2000
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)"}
              server_tls: {ca: "\(certificates.ca)"}
              servers:
            \(backends.map { "   - 127.0.0.1:\($0):1\n" }.joined())
            """, arguments: ["--threads", "2"], waitPort: port)
        try pythonTLS("""
            from pymemcache.client.base import Client
            ctx = ssl.create_default_context(cafile='\(certificates.ca)')
            c = Client(('127.0.0.1', \(port)), tls_context=ctx)
            # Keys that differ in their first bytes: ketama with fnv1a_64 (the default hash)
            # puts keys that differ only in their last bytes ('key0'..'key299') in one narrow
            # band of the ring, all on one server for some port numbers (this failed twice in CI
            # under TSan with every item on one backend and no connection to the other).
            import zlib
            values = {('%08x:key%d' % (zlib.crc32(b'%d' % i), i)): bytes([i % 256]) * (i * 37 % 5000) + b'\\r\\nEND\\r\\n' for i in range(300)}
            for k, v in values.items(): assert c.set(k, v, noreply=False)
            got = c.get_many(list(values))
            assert got == values, [k for k in values if got.get(k) != values[k]][:5]
            big = bytes(range(256)) * 3000
            assert c.set('big', big, noreply=False)
            assert c.get('big') == big
            assert c.incr('n', 1) is None
            c.set('n', b'5'); assert c.incr('n', 2) == 7
            # Both backends hold keys: the pool spreads over TLS servers.
            stats = {p: Client(('127.0.0.1', p), tls_context=ctx).stats() for p in (\(backends[0]), \(backends[1]))}
            seen = {p: (s.get(b'curr_items'), s.get(b'cmd_set'), s.get(b'total_connections')) for p, s in stats.items()}
            assert all(s[b'curr_items'] > 0 for s in stats.values()), seen
            """)
        try assertPlainClientClosed(port: port, request: "version\r\n")
    }

    /// A TLS client whose request comes as one-byte records, all in the socket at once, is read
    /// 64 records a loop pass: the plain client of another pool on the same worker is answered
    /// meanwhile. Before, a read went on until OpenSSL wanted the socket or 4 MiB had come
    /// (bytes bound a plain read's work, not a TLS read's): the worker decrypted record after
    /// record and the innocent client waited (fails on 13dbbf7: its worst round trip 850 ms in
    /// a debug build, 5 ms now; the admin sweep saw 1.2 s for one such client, 10 s for four,
    /// in release).
    func testOneByteRecordsDoNotHoldTheWorker() throws {
        let memcached = try group.memcached(), redis = try group.redis()
        let port = ProcessGroup.freePort(), plainPort = ProcessGroup.freePort()
        try group.tern(config: """
            t:
              listen: 127.0.0.1:\(port)
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)"}
              servers: ["\(memcached.address):1"]
            p:
              listen: 127.0.0.1:\(plainPort)
              redis: true
              servers: ["\(redis.address):1"]
            """, arguments: ["--threads", "1"], waitPort: port)
        try pythonTLS("""
            stop = False
            worst = [0.0]
            rounds = [0]
            failures = []
            def innocent():
                r = redis.Redis(port=\(plainPort), socket_timeout=10)
                i = 0
                while not stop:
                    i += 1
                    started = time.perf_counter()
                    try:
                        r.set('innocent', i)
                        if r.get('innocent') != str(i).encode(): failures.append('wrong value')
                    except Exception as e:
                        failures.append(repr(e))
                        return
                    worst[0] = max(worst[0], time.perf_counter() - started)
                    rounds[0] += 1
                    time.sleep(0.002)
            # The hostile request, sealed one byte a record into memory first, then sent in
            # large writes: the worker, not this script, sets the pace.
            ctx = ssl.create_default_context(cafile='\(certificates.ca)')
            raw = socket.create_connection(('127.0.0.1', \(port)))
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_hostname='localhost')
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            raw.sendall(outgoing.read())
            value = b'v' * 400000
            request = b'set hostile 0 0 %d\\r\\n' % len(value) + value + b'\\r\\n'
            sealed = bytearray()
            for index in range(len(request)):
                tls.write(request[index:index + 1])
                sealed += outgoing.read()
            thread = threading.Thread(target=innocent)
            thread.start()
            time.sleep(0.3)
            before = rounds[0]
            raw.sendall(sealed)
            raw.settimeout(30)
            reply = b''
            while b'\\r\\n' not in reply:
                try:
                    incoming.write(raw.recv(65536))
                    reply += tls.read(65536)
                except ssl.SSLWantReadError:
                    pass
            time.sleep(0.2)
            stop = True
            thread.join()
            assert reply == b'STORED\\r\\n', reply
            assert not failures, failures
            print('%d records; the innocent client: %d round trips, worst %.0f ms' % (len(request), rounds[0] - before, worst[0] * 1000))
            assert worst[0] < 0.3, 'the innocent client waited %.0f ms' % (worst[0] * 1000)
            """)
    }

    /// Memory of closed TLS clients goes back to the system: OpenSSL frees each connection's
    /// state to malloc, which kept the pages (5,000 closed TLS clients left 72 MB behind; TLS
    /// sweep 32); closing them now makes the worker's next trim due, as freed reply slots do.
    func testClosedTLSClientsGiveTheirMemoryBack() throws {
        if let sanitizer = ProcessInfo.processInfo.environment["TERN_SANITIZED"] { throw XCTSkip("memory figures under \(sanitizer)") }
        let redis = try group.redis()
        let port = ProcessGroup.freePort()
        let tern = try group.tern(config: """
            t:
              listen: 127.0.0.1:\(port)
              redis: true
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)"}
              servers: ["\(redis.address):1"]
            """, arguments: ["--threads", "1"], waitPort: port)
        let before = memoryKiB(tern).rss
        try pythonTLS("""
            ctx = ssl.create_default_context(cafile='\(certificates.ca)')
            # Open together, then closed together: the peak holds every connection's state.
            held = []
            for i in range(2000):
                s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', \(port))), server_hostname='localhost')
                s.sendall(b'PING\\r\\n')
                assert s.recv(100) == b'+PONG\\r\\n'
                held.append(s)
            for s in held: s.close()
            """)
        let peak = memoryKiB(tern).peak
        // The sweep runs once a second and trims at most every few sweeps.
        let settled = eventually("settled", within: 10) { memoryKiB(tern).rss - before < (peak - before) / 3 ? "settled" : "\(memoryKiB(tern).rss) KiB" }
        print("2,000 TLS clients: RSS \(before) KiB before, peak \(peak) KiB, \(memoryKiB(tern).rss) KiB after they closed")
        XCTAssertGreaterThan(peak - before, 10_000, "the clients' state took memory")
        XCTAssertEqual(settled, "settled", "peak \(peak) KiB, before \(before) KiB")
    }

    /// A TLS client that trickles one record a byte at a time is an incomplete request: closed
    /// at `client_partial_timeout`, as a plain client trickling a request is, while an innocent
    /// TLS client is served. Before, every byte counted as activity and nothing as a partial
    /// request: such clients stayed for hours and could hold a pool's `client_connections`
    /// (TLS sweep 32; fails on a84b660).
    func testATLSRecordTrickledByteByByteIsTimedOut() throws {
        let redis = try group.redis()
        let port = ProcessGroup.freePort()
        try group.tern(config: """
            t:
              listen: 127.0.0.1:\(port)
              redis: true
              client_partial_timeout: 1500
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)"}
              servers: ["\(redis.address):1"]
            """, arguments: ["--threads", "1"], waitPort: port)
        try pythonTLS("""
            ctx = ssl.create_default_context(cafile='\(certificates.ca)')
            raw = socket.create_connection(('127.0.0.1', \(port)))
            slow = ctx.wrap_socket(raw, server_hostname='localhost')
            slow.sendall(b'PING\\r\\n')
            assert slow.recv(100) == b'+PONG\\r\\n'
            # An application-data record header announcing 16,384 bytes, then a byte a second.
            sock = socket.socket(fileno=slow.fileno())
            sock.sendall(b'\\x17\\x03\\x03\\x40\\x00')
            innocent = redis.Redis(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(certificates.ca)', socket_timeout=5)
            started = time.time()
            closed = None
            while time.time() - started < 6:
                try:
                    sock.sendall(b'x')
                except OSError:
                    closed = time.time() - started
                    break
                assert innocent.ping() is True
                time.sleep(0.5)
                sock.setblocking(False)
                try:
                    if sock.recv(100) == b'':
                        closed = time.time() - started
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = time.time() - started
                    break
                sock.setblocking(True)
            assert closed is not None, 'the trickling client was never closed'
            assert 1.0 < closed < 4.0, closed
            print('a TLS record trickled a byte every 0.5 s: closed after %.1f s' % closed)
            """)
    }

    /// `client_auth: required`: a client without a certificate, or with one from another CA,
    /// fails the handshake; with `user_from_certificate: cn`, the certificate's common name
    /// logs the client in as that user (its key rules apply) without AUTH.
    func testMutualTLSRequiredSelectsTheUser() throws {
        try certificates.issue(name: "app", subject: "/CN=app")
        try certificates.issue(name: "stranger", subject: "/CN=stranger")
        try certificates.otherCA(name: "rogue-ca")
        try certificates.issue(name: "rogue", subject: "/CN=app", signer: "rogue-ca")
        let (backend, port) = try mutualTLSTern(clientAuth: "required", commands: #"["+@read", "+@write", "+@connection", "+acl"]"#, keys: #"["~app:*"]"#)
        let d = certificates.directory
        try pythonTLS("""
            def client(name=None):
                kw = dict(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(certificates.ca)', socket_timeout=5)
                if name: kw.update(ssl_certfile='\(d)/%s.crt' % name, ssl_keyfile='\(d)/%s.key' % name)
                return redis.Redis(**kw)
            # The certificate names user app: no AUTH needed, app's key rules apply.
            app = client('app')
            assert app.set('app:x', '1') is True
            assert app.get('app:x') == b'1'
            try:
                app.set('other:x', '1'); raise SystemExit('NOPERM expected')
            except redis.exceptions.NoPermissionError as e:
                assert 'key' in str(e), e
            assert app.execute_command('ACL', 'WHOAMI') == b'app'
            # A valid certificate naming no user: connected, but must authenticate.
            stranger = client('stranger')
            try:
                stranger.get('app:x'); raise SystemExit('NOAUTH expected')
            except redis.exceptions.AuthenticationError:
                pass
            kw = dict(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(certificates.ca)', username='app', password='app-secret',
                      ssl_certfile='\(d)/stranger.crt', ssl_keyfile='\(d)/stranger.key')
            assert redis.Redis(**kw).get('app:x') == b'1'
            # No certificate, or one from another CA: the handshake fails.
            for name in (None, 'rogue'):
                try:
                    client(name).ping(); raise SystemExit('handshake should fail for %s' % name)
                except (redis.exceptions.ConnectionError, ssl.SSLError, OSError):
                    pass
            """)
        XCTAssertEqual(try backend.call("GET", "app:x"), "$1\r\n1\r\n")
    }

    /// A client offering its last session resumes it on a pool with `ca` (TLS 1.2 and 1.3),
    /// keeping the user its certificate named. Before, OpenSSL refused every such resumption
    /// with a fatal alert ("session id context uninitialized"): Java clients, which offer their
    /// last session on reconnecting, failed every other connection (admin sweep 29; fails on
    /// 8156581 with an `internal_error` alert on the second connection).
    func testSessionsResumeOnPoolsThatVerifyClients() throws {
        try certificates.issue(name: "app", subject: "/CN=app")
        let port = try mutualTLSTern(clientAuth: "optional", commands: #"["+@all"]"#, keys: #"["~*"]"#).port
        let d = certificates.directory
        try pythonTLS("""
            def context(version, certificate):
                ctx = ssl.create_default_context(cafile='\(certificates.ca)')
                ctx.minimum_version = ctx.maximum_version = version
                if certificate: ctx.load_cert_chain('\(d)/app.crt', '\(d)/app.key')
                return ctx
            def connect(ctx, session=None):
                raw = socket.create_connection(('127.0.0.1', \(port)), timeout=5)
                return ctx.wrap_socket(raw, server_hostname='localhost', session=session)
            def whoami(sock):
                sock.sendall(b'*2\\r\\n$3\\r\\nACL\\r\\n$6\\r\\nWHOAMI\\r\\n')
                reply = b''
                while not reply.endswith(b'\\r\\n'): reply += sock.recv(4096)
                return reply
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                for certificate in (True, False):
                    expected = b'$3\\r\\napp\\r\\n' if certificate else b'-NOAUTH Authentication required.\\r\\n'
                    ctx = context(version, certificate)
                    first = connect(ctx)
                    assert whoami(first) == expected, (version, certificate, whoami(first))
                    session = first.session
                    first.close()
                    assert session is not None, version
                    for attempt in range(3):
                        again = connect(ctx, session)
                        assert again.session_reused, (version, certificate, attempt)
                        # The resumed session keeps the user the certificate named (and a
                        # session without one still has to authenticate).
                        assert whoami(again) == expected, (version, certificate, attempt)
                        session = again.session
                        again.close()
            """)
    }

    /// `server_tls` to a Redis that speaks only TLS (and requires a client certificate);
    /// a wrong `server_name` fails verification: the client gets an error, not a hang, and
    /// another pool's client is served meanwhile.
    func testRedisBackendBehindTLSAndAFailedVerification() throws {
        let backendPort = try tlsRedis(clientAuth: true)
        try certificates.issue(name: "tern-client", subject: "/CN=tern")
        let port = ProcessGroup.freePort(), badPort = ProcessGroup.freePort()
        let d = certificates.directory
        try group.tern(config: """
            good:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: 2000
              server_tls: {ca: "\(certificates.ca)", cert: "\(d)/tern-client.crt", key: "\(d)/tern-client.key"}
              servers: ["127.0.0.1:\(backendPort):1"]
            bad:
              listen: 127.0.0.1:\(badPort)
              redis: true
              timeout: 2000
              server_tls: {ca: "\(certificates.ca)", cert: "\(d)/tern-client.crt", key: "\(d)/tern-client.key", server_name: "not-the-name.example"}
              # The failure's text reaches the client (by default a one-server pool closes it).
              close_on_server_failure: false
              servers: ["127.0.0.1:\(backendPort):1"]
            """, arguments: ["--threads", "2"], waitPort: port)
        try pythonTLS("""
            good = redis.Redis(host='127.0.0.1', port=\(port))
            bad = redis.Redis(host='127.0.0.1', port=\(badPort), socket_timeout=5)
            p = good.pipeline(transaction=False)
            for i in range(200): p.set('b:%d' % i, i)
            for i in range(200): p.get('b:%d' % i)
            out = p.execute()
            assert out[200:] == [b'%d' % i for i in range(200)]
            # Replies larger than a read pass (4 MiB) from a TLS backend: a streamed bulk and an
            # array (not streamed).
            import os
            huge = os.urandom(6 << 20)
            assert good.set('b:huge', huge) is True
            assert good.get('b:huge') == huge
            assert good.mget(['b:huge', 'b:1', 'b:huge']) == [huge, b'1', huge]
            start = time.time()
            try:
                bad.get('b:1'); raise SystemExit('an error expected')
            except redis.exceptions.ResponseError as e:
                assert 'certificate' in str(e).lower() or 'tls' in str(e).lower(), e
            assert time.time() - start < 3
            assert good.get('b:7') == b'7'
            """)
        // Straight to the TLS backend: what Tern wrote is there.
        let (status, output) = try ProcessGroup.run("/usr/bin/redis-cli", ["-p", "\(backendPort)", "--tls", "--cacert", certificates.ca,
                                                                          "--cert", "\(d)/tern-client.crt", "--key", "\(d)/tern-client.key", "GET", "b:199"])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output, "199\n")
    }

    /// The INFO poller opens its TLS connections together: two servers that accept and then
    /// never answer (paused) do not stop the handshake with a live server listed after them
    /// from finishing within the poller's 300 ms, pass after pass (the poller's first form
    /// finished handshakes one after another against one deadline, so the live server timed out
    /// behind the paused ones and was shown down).
    func testPollerHandshakesBesidePausedTLSServers() throws {
        var paused: [Process] = []
        var ports: [Int] = []
        for _ in 0..<3 {
            let port = ProcessGroup.freePort()
            let process = try group.launch("/usr/bin/redis-server", ["--port", "0", "--tls-port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                                                    "--tls-cert-file", certificates.serverCert, "--tls-key-file", certificates.serverKey,
                                                                    "--tls-ca-cert-file", certificates.ca, "--tls-auth-clients", "no"], log: "redis-tls-\(port).log")
            try group.waitForPort(port)
            ports.append(port)
            paused.append(process)
        }
        paused.removeLast()
        for process in paused { stopProcess(process) }
        defer { for process in paused { continueProcess(process) } }
        let port = ProcessGroup.freePort()
        try group.tern(config: """
            p:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: 1000
              server_tls: {ca: "\(certificates.ca)", server_name: "localhost"}
              servers: ["127.0.0.1:\(ports[0]):1 a", "127.0.0.1:\(ports[1]):1 b", "127.0.0.1:\(ports[2]):1 live"]
            """, arguments: ["--threads", "1"], waitPort: port)
        let client = try TestClient(port: port)
        func figures() -> String {
            let info = (try? client.call("INFO", "backends")) ?? ""
            return info.split(separator: "\r\n").filter { $0.hasPrefix("backends_") }.joined(separator: " ")
        }
        XCTAssertEqual(eventually("backends_up:1 backends_down:2") { figures() }, "backends_up:1 backends_down:2")
        // Seven seconds: the paused servers are tried again (every five).
        var seen: [String: Int] = [:]
        for _ in 0..<28 {
            seen[figures(), default: 0] += 1
            usleep(250_000)
        }
        XCTAssertEqual(seen, ["backends_up:1 backends_down:2": 28])
    }

    /// Certificates are reloaded on SIGHUP while clients keep working: zero failed requests,
    /// established connections stay, new connections get the new certificate; a key that does
    /// not match its certificate rejects the reload and the old pair stays in use.
    func testCertificateReloadUnderLoadWithZeroFailures() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort()
        let d = certificates.directory
        try certificates.issue(name: "live", subject: "/CN=first", san: "DNS:localhost,IP:127.0.0.1")
        let config = """
            r:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: 2000
              tls: {cert: "\(d)/live.crt", key: "\(d)/live.key"}
              servers: ["\(backend.address):1"]
            """
        let tern = try group.tern(config: config, arguments: ["--threads", "2"], waitPort: port)
        let subjectScript = """
            def subject():
                s = ssl.create_default_context(cafile='\(certificates.ca)')
                with socket.create_connection(('127.0.0.1', \(port))) as raw:
                    with s.wrap_socket(raw, server_hostname='localhost') as t:
                        return dict(x[0] for x in t.getpeercert()['subject'])['commonName']
            """
        // Load from four threads (persistent and reconnecting clients) during two reloads.
        let flag = group.directory + "/reloaded"
        try "".write(toFile: flag, atomically: true, encoding: .utf8)
        let ca = certificates.ca
        let loadScript = "import redis, ssl, socket, threading, time\n" + subjectScript + """

                import os
                errors = []; counts = [0] * 4
                def load(n):
                    r = redis.Redis(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(ca)', socket_timeout=5)
                    end = time.time() + 6
                    i = 0
                    while time.time() < end:
                        try:
                            r.set('load:%d' % n, i)
                            assert r.get('load:%d' % n) == b'%d' % i
                            counts[n] += 1
                            if n >= 2 and i % 50 == 0:
                                r.close()
                                r = redis.Redis(host='127.0.0.1', port=\(port), ssl=True, ssl_ca_certs='\(ca)', socket_timeout=5)
                        except Exception as e:
                            errors.append(repr(e))
                        i += 1
                threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
                for t in threads: t.start()
                for t in threads: t.join()
                open('\(flag)', 'w').write('errors=%d counts=%s first=%s' % (len(errors), counts, errors[:3]))
                """
        let python = try pythonWithClients()
        let loader = Thread { _ = try? ProcessGroup.run("/usr/bin/env", [python, "-c", loadScript]) }
        loader.start()
        sleep(2)
        // Replace the pair (new subject), SIGHUP.
        try certificates.issue(name: "live", subject: "/CN=second", san: "DNS:localhost,IP:127.0.0.1")
        kill(tern.processIdentifier, SIGHUP)
        sleep(1)
        // A key that does not match the certificate: the reload is rejected.
        try FileManager.default.removeItem(atPath: d + "/live.key")
        try FileManager.default.copyItem(atPath: d + "/ca.key", toPath: d + "/live.key")
        kill(tern.processIdentifier, SIGHUP)
        // Wait for the load to finish.
        let deadline = Date().addingTimeInterval(20)
        var result = ""
        while Date() < deadline {
            result = (try? String(contentsOfFile: flag, encoding: .utf8)) ?? ""
            if !result.isEmpty { break }
            usleep(200_000)
        }
        XCTAssertTrue(result.hasPrefix("errors=0 "), result)
        var counts: [Int] = []
        if let open = result.firstIndex(of: "["), let close = result.firstIndex(of: "]"), open < close {
            counts = result[result.index(after: open)..<close].split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) ?? 0 }
        }
        XCTAssertEqual(counts.count, 4, result)
        XCTAssertTrue(counts.allSatisfy { $0 > 20 }, result)
        // New connections get the second certificate; the bad key was refused.
        try pythonTLS(subjectScript + "\nassert subject() == 'second', subject()")
        XCTAssertTrue(group.ternLog().contains("reload (SIGHUP) rejected, keeping the current config: pool 'r': tls: cannot load private key"), group.ternLog().suffix(2000).description)
    }

    /// An unreadable certificate is a config error under `-t` (and at startup), naming the file;
    /// TLS counts as protection for a pool beyond loopback; readable private keys are warned about.
    func testTLSConfigChecksAndWarnings() throws {
        let path = group.directory + "/bad.yml"
        try """
            r:
              listen: 127.0.0.1:\(ProcessGroup.freePort())
              redis: true
              tls: {cert: "\(group.directory)/missing.crt", key: "\(certificates.serverKey)"}
              servers: ["127.0.0.1:6379:1"]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try ProcessGroup.runTern(["-t", "-c", path])
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("missing.crt"), output)
        XCTAssertTrue(output.contains("cannot load certificate"), output)

        // A pool beyond loopback with TLS that requires client certificates (and no password)
        // is not warned about; one with TLS alone is (anyone gets in); a private key others can
        // read is.
        let wide = group.directory + "/wide.yml"
        try """
            r:
              listen: 0.0.0.0:\(ProcessGroup.freePort())
              redis: true
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)", ca: "\(certificates.ca)", client_auth: required}
              servers: ["127.0.0.1:6379:1"]
            open:
              listen: 0.0.0.0:\(ProcessGroup.freePort())
              redis: true
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)"}
              servers: ["127.0.0.1:6379:1"]
            """.write(toFile: wide, atomically: true, encoding: .utf8)
        chmod(certificates.serverKey, 0o600)
        let quiet = try ProcessGroup.runTern(["-t", "-a", "127.0.0.1", "-c", wide])
        XCTAssertEqual(quiet.0, 0, quiet.1)
        XCTAssertFalse(quiet.1.contains("pool 'r' listens"), quiet.1)
        XCTAssertTrue(quiet.1.contains("tern: warning: pool 'open' listens on 0.0.0.0:"), quiet.1)
        XCTAssertFalse(quiet.1.contains("private key"), quiet.1)
        chmod(certificates.serverKey, 0o644)
        let loud = try ProcessGroup.runTern(["-t", "-a", "127.0.0.1", "-c", wide])
        XCTAssertEqual(loud.0, 0, loud.1)
        XCTAssertTrue(loud.1.contains("tern: warning: TLS private key '\(certificates.serverKey)' (pool 'r') is readable by other users (chmod o-r)"), loud.1)
        XCTAssertFalse(loud.1.contains("pool 'r' listens"), loud.1)
    }

    /// Elastic workers move idle TLS clients with their TLS stream: after the move, each of
    /// them is still answered on its connection (no new handshake is possible mid-stream).
    func testIdleTLSClientsMoveBetweenWorkersWithTheirStream() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort(), admin = ProcessGroup.freePort()
        try group.tern(config: """
            r:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: 3000
              tls: {cert: "\(certificates.serverCert)", key: "\(certificates.serverKey)"}
              servers: ["\(backend.address):1"]
            """, arguments: ["--max-threads", "2", "--activate-above", "0.02", "--admin-port", "\(admin)"], waitPort: port)
        // /metrics' per-worker families, read as WorkerScalingTests reads them.
        try pythonTLS("import urllib.request\n" + WorkerScalingTests.helpers(port: port, admin: admin, workers: 2) + """
            def clients_per_worker():
                found = metrics()
                return per(found, "tern_worker_clients"), found
            ctx = ssl.create_default_context(cafile='\(certificates.ca)')
            def call(conn, payload, expect):
                conn.sendall(payload)
                got = b""
                while len(got) < len(expect):
                    chunk = conn.recv(65536)
                    assert chunk, got
                    got += chunk
                assert got == expect, (payload, got)
            idle = []
            for i in range(10):
                c = ctx.wrap_socket(socket.create_connection(('127.0.0.1', \(port)), timeout=5), server_hostname='localhost')
                call(c, b"PING\\r\\n", b"+PONG\\r\\n")
                idle.append(c)
            stop, errors, kept = [], [], []
            def load():
                try:
                    r = redis.Redis(port=\(port), ssl=True, ssl_ca_certs='\(certificates.ca)')
                    kept.append(r)  # stays open: the counts below include it
                    r.set("hot", "x")
                    while not stop:
                        p = r.pipeline(transaction=False)
                        for _ in range(200): p.get("hot")
                        assert all(v == b"x" for v in p.execute())
                except Exception as e:
                    errors.append(e)
            t = threading.Thread(target=load, daemon=True)
            t.start()
            deadline = time.time() + 30
            while time.time() < deadline:
                counts, found = clients_per_worker()
                if counts[1] and counts[1] >= 5: break
                time.sleep(0.2)
            stop.append(True)
            t.join()
            assert not errors, errors
            counts, found = clients_per_worker()
            assert counts[1] >= 5 and sum(counts) == 11, found
            assert found['tern_worker_clients_moved_total{worker="0"}'] >= 4, found
            for i, c in enumerate(idle):
                call(c, b"SET moved:%d v%d\\r\\n" % (i, i), b"+OK\\r\\n")
                call(c, b"GET moved:%d\\r\\n" % i, b"$%d\\r\\nv%d\\r\\n" % (len(b"v%d" % i), i))
            """)
        XCTAssertFalse(group.ternLog().contains("TLS handshake"), group.ternLog().suffix(2000).description)
    }
}
