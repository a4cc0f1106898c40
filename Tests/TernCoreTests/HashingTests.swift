import XCTest
@testable import TernCore

final class HashingTests: XCTestCase {
    /// DESIGN.md §4: golden values of nutcracker 0.5.0 for the key `apple`.
    func testGoldenValuesForApple() {
        let expected: [HashFunction: UInt32] = [
            .oneAtATime: 2_297_466_611, .md5: 3_195_025_439, .crc16: 3_662_830_516, .crc32: 10542,
            .crc32a: 2_838_417_488, .fnv1_32: 67_176_023, .fnv1a_32: 280_767_167, .fnv1_64: 473_199_127,
            .fnv1a_64: 1_488_911_807, .hsieh: 3_738_850_110, .jenkins: 1_442_444_624, .murmur: 4_142_305_122,
        ]
        XCTAssertEqual(expected.count, HashFunction.allCases.count)
        for (function, value) in expected {
            XCTAssertEqual(function.hash(Array("apple".utf8)), value, "\(function.rawValue)")
        }
    }

    func testMD5MatchesRFC1321() {
        XCTAssertEqual(MD5.digest(Array("".utf8)).hexString, "d41d8cd98f00b204e9800998ecf8427e")
        XCTAssertEqual(MD5.digest(Array("abc".utf8)).hexString, "900150983cd24fb0d6963f7d28e17f72")
        XCTAssertEqual(MD5.digest(Array("12345678901234567890123456789012345678901234567890123456789012345678901234567890".utf8)).hexString,
                       "57edf4a22be3c955ac49da2e2107b67a")
    }

    func testSignExtensionOfHighBytes() {
        // A byte >= 0x80 is read through x86's signed char: fnv1a_32 of [0x80] mixes in 0xffffff80.
        let expected = (UInt32(2_166_136_261) ^ 0xffff_ff80) &* 16_777_619
        XCTAssertEqual(HashFunction.fnv1a_32.hash([0x80]), expected)
        XCTAssertNotEqual(HashFunction.fnv1a_32.hash([0x80]), (UInt32(2_166_136_261) ^ 0x80) &* 16_777_619)
    }

    func testEmptyKeyAndLongKeysDoNotTrap() {
        for function in HashFunction.allCases {
            _ = function.hash([UInt8]())
            for length in 1...40 { _ = function.hash([UInt8](repeating: 0xff, count: length)) }
        }
        XCTAssertEqual(HashFunction.hsieh.hash([UInt8]()), 0)
    }

    func testRedisSlotsOfKnownKeys() {
        // Values from Redis's CLUSTER KEYSLOT documentation and the hash-tag rule.
        func slot(_ text: String) -> Int { Array(text.utf8).withUnsafeBytes { hashSlot($0) } }
        XCTAssertEqual(slot("123456789"), 0x31C3 & 0x3fff)
        XCTAssertEqual(slot("{user1000}.following"), slot("{user1000}.followers"))
        XCTAssertEqual(slot("foo{}{bar}"), slot("foo{}{bar}"))
        XCTAssertNotEqual(slot("foo{}{bar}"), slot("bar"))
        XCTAssertEqual(slot("foo{{bar}}zap"), slot("{bar"))
    }

    func testKetamaPointCountUsesFloat32() {
        XCTAssertEqual(Placement.ketamaPointCount(weight: 1, totalWeight: 25, liveCount: 25), 156)
        XCTAssertEqual(Placement.ketamaPointCount(weight: 1, totalWeight: 4, liveCount: 4), 160)
    }

    func testDefaultSlotSplitMatchesRedisCli() {
        XCTAssertEqual(Placement.defaultSlotRanges(serverCount: 3), [0...5460, 5461...10922, 10923...16383])
        XCTAssertEqual(Placement.defaultSlotRanges(serverCount: 1), [0...16383])
    }
}
