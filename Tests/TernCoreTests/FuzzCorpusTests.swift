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
                    guard let bytes = FuzzChecks.readFile(root + "/" + folder + "/" + name) else { continue }
                    bytes.withUnsafeBytes { FuzzChecks.run(target, $0) }
                    replayed += 1
                }
            }
        }
        XCTAssertGreaterThanOrEqual(replayed, 40, "the seed corpus is there")
    }
}
