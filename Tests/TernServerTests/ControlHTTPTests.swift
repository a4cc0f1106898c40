import XCTest
@testable import TernServer

/// The admin endpoint's HTTP parsing and query decoding, in memory.
final class ControlHTTPTests: XCTestCase {
    func parse(_ text: String) -> Result<ControlRequest, ControlHTTPError> {
        let bytes = Array(text.utf8)
        return ControlHTTP.parse(head: bytes[...])
    }

    func testHeadEndFindsTheEmptyLineAcrossResumes() {
        let request = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\nrest".utf8)
        for cut in 0...request.count {
            var seen: [UInt8] = []
            var found: Int?
            for part in [request[..<cut], request[cut...]] {
                let resume = max(0, seen.count - 2)
                seen += part
                if found == nil { found = ControlHTTP.headEnd(seen, from: resume) }
            }
            XCTAssertEqual(found, request.count - 4, "cut at \(cut)")
        }
        XCTAssertEqual(ControlHTTP.headEnd(Array("GET / HTTP/1.0\n\n".utf8), from: 0), 16)
        XCTAssertNil(ControlHTTP.headEnd(Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8), from: 0))
    }

    func testRequestLine() {
        XCTAssertEqual(try parse("GET /locate?pool=a&key=b HTTP/1.1\r\nHost: x\r\n\r\n").get(),
                       ControlRequest(method: "GET", path: "/locate", query: "pool=a&key=b"))
        XCTAssertEqual(try parse("HEAD /metrics HTTP/1.0\n\n").get(), ControlRequest(method: "HEAD", path: "/metrics", query: ""))
        XCTAssertEqual(try parse("PATCH /x? HTTP/1.1\r\n\r\n").get(), ControlRequest(method: "PATCH", path: "/x", query: ""))
        for bad in ["\r\n\r\n", "GET\r\n\r\n", "GET /\r\n\r\n", "GET / HTTP/1.1 extra\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n",
                    "GET x HTTP/1.1\r\n\r\n", "GET http://host/ HTTP/1.1\r\n\r\n", "GET / HTTP/2\r\n\r\n", "GET / http/1.1\r\n\r\n",
                    "G@T / HTTP/1.1\r\n\r\n", "GET /\u{7f} HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
                    "GET / HTTP/1.1\r\n: empty name\r\n\r\n", "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                    "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "GET / HTTP/1.1\r\n folded\r\n\r\n"] {
            XCTAssertThrowsError(try parse(bad).get(), bad.debugDescription)
        }
    }

    func testQueryDecoding() throws {
        let decoded = try ControlHTTP.queryParameters("pool=demo&key=a+b%2F%7Bc%7D%00%ff&flag&=v&&x=%41").get()
        XCTAssertEqual(decoded.map(\.name), ["pool", "key", "flag", "", "x"])
        XCTAssertEqual(decoded[1].value, Array("a b/{c}".utf8) + [0, 0xff])
        XCTAssertEqual(decoded[2].value, [])
        XCTAssertEqual(decoded[4].value, [0x41])
        for bad in ["key=%", "key=%4", "key=%4g", "key=%%41", "k%zz=1"] {
            XCTAssertThrowsError(try ControlHTTP.queryParameters(bad).get(), bad)
        }
        XCTAssertEqual(try ControlHTTP.queryParameters("").get().count, 0)
    }

    func testHeadResponseKeepsTheLengthAndDropsTheBody() {
        let response = ControlResponse(405, "text/plain", Array("only GET and HEAD\n".utf8), headers: [("Allow", "GET, HEAD")])
        XCTAssertEqual(String(decoding: ControlHTTP.encode(response, includeBody: false), as: UTF8.self),
                       "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n")
        XCTAssertTrue(String(decoding: ControlHTTP.encode(response, includeBody: true), as: UTF8.self).hasSuffix("\r\n\r\nonly GET and HEAD\n"))
    }

    /// The histograms /metrics writes itself quote label values as the Prometheus text format
    /// does (backslash, double quote and line feed escaped, nothing else), not as JSON does.
    func testHistogramLabelValuesUseThePrometheusEscapes() {
        let pool = "a\"b\\c\td\ne\u{1}é"
        let text = StatsReport.latencyHistogram(pool: pool, server: "127.0.0.1:6379:1", [])
        let first = text.split(separator: "\n")[0]
        XCTAssertTrue(first.hasPrefix("tern_server_latency_seconds_bucket{pool=\"a\\\"b\\\\c\td\\ne\u{1}é\",server=\"127.0.0.1:6379:1\",le=\""), String(first))
        XCTAssertEqual(text.split(separator: "\n").count, latencyBucketBounds.count + 3)
        XCTAssertTrue(StatsReport.commandHistogram(pool: pool, command: "get", row: 0, []).hasPrefix(
            "tern_command_latency_seconds_bucket{pool=\"a\\\"b\\\\c\td\\ne\u{1}é\",command=\"get\",le=\""))
    }
}
