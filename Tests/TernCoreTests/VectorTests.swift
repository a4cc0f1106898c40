import XCTest
@testable import TernCore

/// Reproduces every placement in ../shared/vectors, made by a real nutcracker and a real Redis.
final class VectorTests: XCTestCase {
    static var vectorsDirectory: String {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/../shared/vectors"
    }

    struct VectorFile {
        var configText: String
        var rows: [(key: String, value: Int)]
    }

    func read(_ name: String) throws -> VectorFile {
        let path = Self.vectorsDirectory + "/" + name
        guard let file = fopen(path, "r") else {
            throw XCTSkip("vectors not found at \(path)")
        }
        defer { fclose(file) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        var config = ""
        var inConfig = false
        var rows: [(String, Int)] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("#") {
                if line.contains("config (exact file") { inConfig = true; continue }
                if inConfig { config += String(line.dropFirst(1)) + "\n" }
                continue
            }
            let fields = line.split(separator: "\t")
            guard fields.count == 2, let value = Int(fields[1]) else { continue }
            rows.append((String(fields[0]), value))
        }
        return VectorFile(configText: config, rows: rows)
    }

    func checkPlacement(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let vectors = try read(name)
        let config = try ConfigLoader.load(text: vectors.configText, file: name)
        let placement = config.pools[0].placement()
        XCTAssertGreaterThanOrEqual(vectors.rows.count, 2000, file: file, line: line)
        var mismatches = 0
        for row in vectors.rows {
            let server = Array(row.key.utf8).withUnsafeBytes { placement.server(forKey: $0) }
            if server != row.value {
                mismatches += 1
                if mismatches < 5 { XCTFail("\(name): key \(row.key) -> \(server ?? -1), nutcracker put it on \(row.value)", file: file, line: line) }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(name)", file: file, line: line)
    }

    func testKetamaFnv1a64() throws { try checkPlacement("ketama_fnv1a_64.tsv") }
    func testKetamaMD5() throws { try checkPlacement("ketama_md5.tsv") }
    func testKetamaWeightedNamed() throws { try checkPlacement("ketama_weighted_named.tsv") }
    func testModulaCrc32a() throws { try checkPlacement("modula_crc32a.tsv") }
    func testHashTagKetama() throws { try checkPlacement("hashtag_ketama_fnv1a_64.tsv") }

    /// The ketama search looks only inside the hash's bucket (`Placement.bucketStarts`), or not at
    /// all when every point that can answer the bucket is one server's (`bucketServers`): it must
    /// find the point the search over the whole ring finds (twemproxy's), for rings of every size
    /// (1 to 300 servers, weighted, both ketama variants), at the edges of the hash space, at
    /// every point and next to it, and at random hashes.
    func testKetamaBucketedSearchFindsTheWholeRingsPoint() {
        var random = SystemRandomNumberGenerator()
        for (serverCount, distribution) in [(1, Distribution.ketama), (2, .ketama), (3, .ketamaLibmemcached), (7, .ketama),
                                            (40, .ketama), (300, .ketama), (120, .ketamaLibmemcached)] {
            let names = (0..<serverCount).map { "10.0.\($0 / 250).\($0 % 250):11211" }
            let weights = (0..<serverCount).map { 1 + $0 % 3 }
            let placement = Placement(distribution: distribution, hash: .fnv1a_64, hashTag: nil, names: names,
                                      weights: weights, live: Array(repeating: true, count: serverCount))
            let values = placement.pointValues
            XCTAssertFalse(values.isEmpty)
            func whole(_ hash: UInt32) -> Int {
                var low = 0, high = values.count
                while low < high {
                    let middle = (low + high) >> 1
                    if values[middle] < hash { low = middle + 1 } else { high = middle }
                }
                return Int(placement.pointServers[low == values.count ? 0 : low])
            }
            var hashes: [UInt32] = [0, 1, UInt32.max, UInt32.max - 1, 1 << 31, (1 << 31) - 1]
            for value in values { hashes += [value, value &- 1, value &+ 1] }
            // Both edges of every bucket (`Placement.bucketServers` answers whole buckets).
            for bucket in 0..<(placement.bucketStarts.count - 1) {
                let lowest = UInt32(truncatingIfNeeded: UInt64(bucket) << UInt64(placement.bucketShift))
                hashes += [lowest, lowest | ((1 << placement.bucketShift) - 1)]
            }
            for _ in 0..<20_000 { hashes.append(UInt32.random(in: 0...UInt32.max, using: &random)) }
            // The shortcut must be what answers most hashes of a small ring.
            let uniform = placement.bucketServers.filter { $0 >= 0 }.count
            if serverCount <= 7 { XCTAssertGreaterThan(uniform * 10, placement.bucketServers.count * 8, "\(serverCount) servers") }
            var wrong = 0
            for hash in hashes where placement.server(forHash: hash) != whole(hash) { wrong += 1 }
            XCTAssertEqual(wrong, 0, "\(serverCount) servers, \(distribution): \(wrong) of \(hashes.count) hashes placed apart from the whole-ring search")
        }
    }

    func testRedisSlots() throws {
        let vectors = try read("slots.tsv")
        XCTAssertGreaterThanOrEqual(vectors.rows.count, 2000)
        for row in vectors.rows {
            let slot = Array(row.key.utf8).withUnsafeBytes { hashSlot($0) }
            XCTAssertEqual(slot, row.value, row.key)
        }
    }
}
