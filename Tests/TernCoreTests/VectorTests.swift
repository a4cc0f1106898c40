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

    func testRedisSlots() throws {
        let vectors = try read("slots.tsv")
        XCTAssertGreaterThanOrEqual(vectors.rows.count, 2000)
        for row in vectors.rows {
            let slot = Array(row.key.utf8).withUnsafeBytes { hashSlot($0) }
            XCTAssertEqual(slot, row.value, row.key)
        }
    }
}
