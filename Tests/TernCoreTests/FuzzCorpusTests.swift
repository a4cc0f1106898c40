import XCTest
import TernFuzzChecks

/// Replays the fuzz seed corpus and every past finding through the fuzz targets' checks.
final class FuzzCorpusTests: XCTestCase {
    func testCorpusAndRegressions() throws {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        var replayed = 0
        for target in FuzzTarget.allCases {
            for folder in ["fuzz/corpus/\(target.rawValue)", "fuzz/regressions/\(target.rawValue)"] {
                guard let directory = opendir(root + "/" + folder) else { continue }
                defer { closedir(directory) }
                while let entry = readdir(directory) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                    guard !name.hasPrefix(".") else { continue }
                    guard let file = fopen(root + "/" + folder + "/" + name, "rb") else { continue }
                    var bytes: [UInt8] = []
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = fread(&chunk, 1, chunk.count, file)
                        if count <= 0 { break }
                        bytes += chunk[0..<count]
                    }
                    fclose(file)
                    bytes.withUnsafeBytes { FuzzChecks.run(target, $0) }
                    replayed += 1
                }
            }
        }
        XCTAssertGreaterThanOrEqual(replayed, 40, "the seed corpus is there")
    }
}
