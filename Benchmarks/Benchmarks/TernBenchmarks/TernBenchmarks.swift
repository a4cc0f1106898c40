// Codec parse/serialise, hash functions, ketama and slot lookup, multi-get split/merge.
// Each benchmark reports wall time and malloc counts; the codecs must not allocate.
import Benchmark
import TernCore

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .mallocCountTotal, .instructions], maxDuration: .seconds(2), maxIterations: 100_000)

    let getFrame = Array("get user:1000:profile\r\n".utf8)
    let setFrame = Array(("set user:1000:profile 0 0 32\r\n" + String(repeating: "x", count: 32) + "\r\n").utf8)
    let multiGet = Array(("get " + (0..<10).map { "key:\($0)" }.joined(separator: " ") + "\r\n").utf8)
    let respGet = Array("*2\r\n$3\r\nGET\r\n$16\r\nuser:1000:profile\r\n".utf8)
    let respSet = Array(("*3\r\n$3\r\nSET\r\n$16\r\nuser:1000:profile\r\n$32\r\n" + String(repeating: "x", count: 32) + "\r\n").utf8)
    let limits = MemcacheLimits()
    let respLimits = RespLimits()

    // The harness's own allocations per sample: every other count is read against this one.
    Benchmark("baseline (empty loop)") { benchmark in
        for index in benchmark.scaledIterations { blackHole(index) }
    }
    Benchmark("memcached parse get") { benchmark in
        getFrame.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(MemcacheRequestParser.parse(bytes, limits: limits)) }
        }
    }
    Benchmark("memcached parse set (32 B)") { benchmark in
        setFrame.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(MemcacheRequestParser.parse(bytes, limits: limits)) }
        }
    }
    // Argument lists are reused across requests, as each client's is in the server.
    let getArguments = RespArguments()
    let setArguments = RespArguments()
    Benchmark("RESP parse GET") { benchmark in
        respGet.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(RespRequestParser.parse(bytes, limits: respLimits, into: getArguments)) }
        }
    }
    Benchmark("RESP parse SET (32 B)") { benchmark in
        respSet.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(RespRequestParser.parse(bytes, limits: respLimits, into: setArguments)) }
        }
    }
    let getName = Array("get".utf8)
    Benchmark("RESP command lookup") { benchmark in
        getName.withUnsafeBytes { name in
            for _ in benchmark.scaledIterations { blackHole(RedisCommandTable.lookup(name)) }
        }
    }
    let mgetReply = Array(("*10\r\n" + (0..<10).map { "$5\r\nvalue\(($0))\r\n" }.joined()).utf8)
    Benchmark("RESP frame 10-element reply") { benchmark in
        mgetReply.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(RespReplyParser.parse(bytes)) }
        }
    }
    let key = Array("user:1000:profile".utf8)
    for function in HashFunction.allCases {
        Benchmark("hash \(function.rawValue) (17 B key)") { benchmark in
            key.withUnsafeBytes { bytes in
                for _ in benchmark.scaledIterations { blackHole(function.hash(bytes)) }
            }
        }
    }
    let names = (0..<25).map { "10.0.0.\($0):11211" }
    let ketama = Placement(distribution: .ketama, hash: .fnv1a_64, hashTag: nil, names: names, weights: names.map { _ in 1 }, live: names.map { _ in true })
    Benchmark("ketama lookup (25 servers)") { benchmark in
        key.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(ketama.server(forKey: bytes)) }
        }
    }
    let slotTable = (0..<hashSlotCount).map { Int32($0 * 3 / hashSlotCount) }
    let slots = Placement(distribution: .slots, hash: .crc16, hashTag: .braces, names: ["a", "b", "c"], weights: [1, 1, 1], live: [true, true, true], slotServers: slotTable)
    let taggedKey = Array("{user1000}.following".utf8)
    Benchmark("slot lookup ({tag})") { benchmark in
        taggedKey.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations { blackHole(slots.server(forKey: bytes)) }
        }
    }
    // Multi-get split: parse the line, place each of its 10 keys.
    let placement = Placement(distribution: .ketama, hash: .fnv1a_64, hashTag: nil, names: ["a:1", "b:2", "c:3"], weights: [1, 1, 1], live: [true, true, true])
    Benchmark("multi-get split (10 keys)") { benchmark in
        multiGet.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations {
                guard case let .request(request) = MemcacheRequestParser.parse(bytes, limits: limits) else { continue }
                var position = request.keysStart
                var servers = 0
                while position < request.keysEnd {
                    let start = position
                    while position < request.keysEnd, bytes[position] != 0x20 { position += 1 }
                    servers &+= placement.server(forKey: UnsafeRawBufferPointer(rebasing: bytes[start..<position])) ?? 0
                    position += 1
                }
                blackHole(servers)
            }
        }
    }
    // Multi-get merge: frame a 10-value reply and walk its records.
    let values = Array(((0..<10).map { "VALUE key:\($0) 0 5\r\nvalue\r\n" }.joined() + "END\r\n").utf8)
    Benchmark("multi-get merge scan (10 values)") { benchmark in
        values.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations {
                blackHole(MemcacheReplyParser.parse(bytes, framing: .retrieval))
                var total = 0
                MemcacheReplyParser.forEachValue(bytes) { _, record in total &+= record.count }
                blackHole(total)
            }
        }
    }
    // A 10-value reply of 1 KiB values arriving in 1,460-byte reads: framing resumes at the first
    // incomplete record instead of rescanning from the start on every read.
    let large = Array(((0..<10).map { "VALUE key:\($0) 0 1024\r\n" + String(repeating: "v", count: 1024) + "\r\n" }.joined() + "END\r\n").utf8)
    Benchmark("multi-get reply framed in 1460-byte reads (10 x 1 KiB)") { benchmark in
        large.withUnsafeBytes { bytes in
            for _ in benchmark.scaledIterations {
                var resumeAt = 0
                var available = 0
                var result = MemcacheReplyParser.Result.incomplete
                while result == .incomplete, available < bytes.count {
                    available = min(bytes.count, available + 1460)
                    result = MemcacheReplyParser.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<available]), framing: .retrieval, resumeAt: &resumeAt)
                }
                blackHole(result)
            }
        }
    }
}
